"""Shared fixtures (a demo dataset, trained runs, a context model) and the slow tier.

A test is slow when it is marked `@pytest.mark.slow` (it starts a process, trains or serves) or
when it uses one of SLOW_FIXTURES (a trained run or a running service); `python -m pytest -m
"not slow"` is the fast unit tier."""

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest

import warm_process
from helpers import run_script, tiny_train_args

SLOW_FIXTURES = {"trained_run", "demo_run", "exported", "service", "run2024", "context_model"}
# Workers of pytest-xdist (-n auto in pyproject.toml): one per core, up to MAX_WORKERS, because each
# builds its own session fixtures and fork server. Each runs torch on one thread: the suite is mostly
# short commands, imports and waits, which a second thread per test barely speeds up but a second
# test at once does (docs/performance.md has the times).
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch when its thread pool starts


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """Slow tests start real processes from the fork server (tests/warm_process.py): start it now, so
    that its imports overlap the first tests instead of delaying the first service."""
    if any(item.get_closest_marker("slow") for item in getattr(session, "items", ())):
        warm_process.start_server()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small synthetic dataset in the ISIC 2020 layout (metadata.csv inside the image folder)."""
    from src.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, n_images=80, melanoma_rate=0.3, seed=1)
    return out


@pytest.fixture(scope="session")
def trained_run(demo_dir, tmp_path_factory):
    """A finished tiny training run on the demo fixture: (checkpoint dir, best checkpoint path)."""
    out = tmp_path_factory.mktemp("run")
    r = run_script(*tiny_train_args(demo_dir, out, 2))
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "training_history.json").read_text())
    return out, out / history["best_checkpoint"]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that build(folder) fills once for all pytest-xdist workers: the first worker that asks
    builds it, holding a lock; the others wait for the lock and reuse the folder."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's own folder
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A `--demo` run (64 px, 1,200 synthetic images, 240 for validation): (checkpoint dir, best
    checkpoint, data dir). DEMO_RUN may name a finished one: .ci/run trains the real demo (ResNet50,
    4 epochs) just before the suite and lends it (read only: the tests write their exports and
    predictions to their own folders). Without it, one is trained here: one epoch of ResNet18."""
    if os.environ.get("DEMO_RUN"):
        out = Path(os.environ["DEMO_RUN"]).resolve()
        history = json.loads((out / "training_history.json").read_text())
        assert history["config"].get("DEMO") is True, f"DEMO_RUN={out} is not a --demo run"
        return out, out / history["best_checkpoint"], Path(history["config"]["DATA_DIR"]).resolve()

    def train(root):
        r = run_script(
            "src/training/train.py",
            "--demo",
            f"--DATA_DIR={root / 'demo'}",
            f"--METADATA_CSV={root / 'demo' / 'metadata.csv'}",
            f"--CHECKPOINT_DIR={root / 'checkpoints'}",
            "--ARCH=resnet18",
            "--NUM_EPOCHS=1",
            "--NUM_WORKERS=0",
        )
        assert r.returncode == 0, r.stderr

    root = built_once(tmp_path_factory, "demo_run", train)
    out = root / "checkpoints"
    history = json.loads((out / "training_history.json").read_text())
    return out, out / history["best_checkpoint"], root / "demo"


@pytest.fixture(scope="session")
def context_model(trained_run, demo_dir, tmp_path_factory):
    """A fused context model over the demo fixture: its image scores come from the trained run
    (in-fold, which is fine for testing the service, not for measuring anything)."""
    import numpy as np

    from src.data.metadata import read_metadata
    from src.data.splits import assign_folds
    from src.inference.predictor import Predictor
    from src.training.context import train_context

    table = read_metadata(demo_dir / "metadata.csv").table
    predictor = Predictor(trained_run[1])
    logits = np.array(
        [predictor.logit_bytes((demo_dir / f"{n}.jpg").read_bytes()) for n in table["image_name"]]
    )
    out = tmp_path_factory.mktemp("context")
    fused, _ = train_context(table, assign_folds(table, 3, 0), logits)
    fused.save(out / "fused.json")
    alone, _ = train_context(table, assign_folds(table, 3, 0))
    alone.save(out / "alone.json")
    return out


@pytest.fixture(scope="session")
def exported(demo_run, tmp_path_factory):
    """The demo_run checkpoint exported once, as a user would: (fp32 .onnx, int8 .onnx, export's stdout)."""

    def export(folder):
        r = run_script(
            "src/inference/export.py", "--checkpoint", demo_run[1], "--out", folder / "m.onnx", "--int8"
        )
        assert r.returncode == 0, r.stderr
        (folder / "stdout.txt").write_text(r.stdout)

    folder = built_once(tmp_path_factory, "export", export)
    return folder / "m.onnx", folder / "m_int8.onnx", (folder / "stdout.txt").read_text()
