"""Shared fixtures (a demo dataset, trained runs) and the slow tier: a test that trains, serves or
runs a command is marked slow, so `python -m pytest -m "not slow"` is the fast unit tier."""

import inspect

import pytest

from helpers import run_script, tiny_train_args

SLOW_FIXTURES = {"trained_run", "demo_run", "service", "run2024"}
SLOW_CALLS = ("run_script(", "start_service(", "start(tiny_args(", "subprocess.", "Popen(", "train.main(")


def pytest_collection_modifyitems(items):
    """Mark slow what starts a process, trains, or needs a trained run, so that nobody has to
    remember the marker when adding such a test."""
    for item in items:
        source = inspect.getsource(item.function) if hasattr(item, "function") else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(c in source for c in SLOW_CALLS):
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
    """The real `--demo` preset cut to one epoch: (checkpoint dir, best checkpoint), 240 validation images."""
    import json

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
    return out, out / history["best_checkpoint"]
