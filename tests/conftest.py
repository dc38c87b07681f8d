"""Shared fixtures (a demo dataset, trained runs, a context model) and the slow tier.

A test is slow when it is marked `@pytest.mark.slow` (it starts a process, trains or serves) or
when it uses one of SLOW_FIXTURES (a trained run or a running service); `python -m pytest -m
"not slow"` is the fast unit tier."""

import pytest

from helpers import run_script, tiny_train_args

SLOW_FIXTURES = {"trained_run", "demo_run", "exported", "service", "run2024", "context_model"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    import json

    out = tmp_path_factory.mktemp("run")
    r = run_script(*tiny_train_args(demo_dir, out, 2))
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "training_history.json").read_text())
    return out, out / history["best_checkpoint"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The real `--demo` preset (ResNet50, 64 px, 1,200 synthetic images, 240 for validation):
    (checkpoint dir, best checkpoint, data dir). Trained here for one epoch, unless DEMO_RUN names a
    finished `--demo` run: .ci/run trains the full demo just before the suite and lends it (read only:
    the tests write their exports and predictions to their own folders)."""
    import json
    import os
    from pathlib import Path

    if os.environ.get("DEMO_RUN"):
        out = Path(os.environ["DEMO_RUN"]).resolve()
        history = json.loads((out / "training_history.json").read_text())
        assert history["config"].get("DEMO") is True, f"DEMO_RUN={out} is not a --demo run"
        return out, out / history["best_checkpoint"], Path(history["config"]["DATA_DIR"]).resolve()
    root = tmp_path_factory.mktemp("demo_run")
    out = root / "checkpoints"
    r = run_script(
        "src/training/train.py",
        "--demo",
        f"--DATA_DIR={root / 'demo'}",
        f"--METADATA_CSV={root / 'demo' / 'metadata.csv'}",
        f"--CHECKPOINT_DIR={out}",
        "--NUM_EPOCHS=1",
        "--NUM_WORKERS=0",
    )
    assert r.returncode == 0, r.stderr
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
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    r = run_script("src/inference/export.py", "--checkpoint", demo_run[1], "--out", out, "--int8")
    assert r.returncode == 0, r.stderr
    return out, out.with_name("m_int8.onnx"), r.stdout
