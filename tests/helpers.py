"""Helpers shared by the tests: paths, running a command as a user would, small generated images."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ISIC_SHARED", ROOT.parent / "shared" / "isic-real"))
sys.path.insert(0, str(ROOT))

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real ISIC files not found at {SHARED}")


def run_script(*args, cwd=ROOT, timeout=300, env=None):
    """Run one of the project's commands as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    script = ROOT / str(args[0])  # scripts are named from the repository root, wherever they run
    return subprocess.run(
        [sys.executable, str(script), *map(str, args[1:])],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def write_jpeg(path, rgb, quality=92):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def gradient_image(h=60, w=90):
    """Non-constant RGB image, so that crops, flips and resizes can be told apart."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 128)], -1).astype(
        np.uint8
    )


def tiny_train_args(data_dir, out, epochs=2, *extra):
    """train.py arguments for a run of a few seconds on the CPU."""
    return [
        "src/training/train.py",
        f"--DATA_DIR={data_dir}",
        f"--METADATA_CSV={Path(data_dir) / 'metadata.csv'}",
        f"--CHECKPOINT_DIR={out}",
        "--PRETRAINED=False",
        "--IMG_SIZE=32",
        "--BATCH_SIZE=16",
        f"--NUM_EPOCHS={epochs}",
        "--NUM_WORKERS=0",
        "--CACHE_DIR=",
        "--MERGE_NEAR_DUPLICATES=False",  # the synthetic drawings look alike (test_dedup.py merges)
        *extra,
    ]
