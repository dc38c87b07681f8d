"""Helpers shared by the tests: paths, running a command as a user would, small generated images.

torch, cv2 and httpx are imported where they are used: the fuzz scripts (tests/context_fuzz.py)
import this module and fork once per case, which is several times slower once torch is loaded."""

import contextlib
import importlib
import io
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from warm_process import WarmProcess, run_warm

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ISIC_SHARED", ROOT.parent / "shared" / "isic-real"))

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real ISIC files not found at {SHARED}")


# A guard against a hung command, not a speed limit: a slow or loaded machine must never trip it.
HANG_TIMEOUT_S = 1800


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """A real write failure in this process: the OS refuses to grow any file past `max_bytes` (EFBIG,
    as a full disk gives ENOSPC), through the same C++ writer paths that a full disk takes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def run_script(*args, cwd=ROOT, env=None):
    """Run one of the project's commands as `python SCRIPT ARGS` would, but in this process: its
    `main(argv)` with stdout and stderr captured, in `cwd`, with `env` added to the environment.
    Every command is a `main` wrapped by src.errors.command, so the exit code and the one `error:`
    line are the same as in a new interpreter, without paying 5-7 s to import torch again. Tests of
    the process itself (signals, crash isolation) start a real one (tests/warm_process.py), and those
    of the script's own entry point a new interpreter (run_process)."""
    import torch

    script = str(args[0])
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # a command may set its own (THREADS): the next test keeps ours
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(environment(env or {}))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = module.main([str(a) for a in args[1:]])
        except SystemExit as e:  # argparse's usage errors and --help; sys.exit("message")
            if isinstance(e.code, str):
                print(e.code, file=err)
            code = e.code if isinstance(e.code, int) or e.code is None else 1
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess([script, *args[1:]], code or 0, out.getvalue(), err.getvalue())


def torchrun(args, *launch: str) -> subprocess.Popen:
    """A script (args[0], relative to the repository) under torchrun: gloo on the CPU, one torch thread
    per process."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launch, str(ROOT / args[0]), *map(str, args[1:])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, err[-3000:]
    return out


@contextlib.contextmanager
def environment(added: dict):
    saved = {key: os.environ.get(key) for key in added}
    os.environ.update({key: str(value) for key, value in added.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_process(*args, cwd=ROOT, timeout=HANG_TIMEOUT_S, env=None):
    """Run a script in a new interpreter, exactly as a user types it (from the repository root)."""
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
    import cv2

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
    """train.py arguments for a run of a few seconds on the CPU (ResNet18: a sixth of ResNet50's work
    and under half its checkpoint size; the demo_run fixture and CI train the default ResNet50)."""
    return [
        "src/training/train.py",
        "--ARCH=resnet18",
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


def patients_table(n_patients=150, seed=0):
    """A generated metadata table in the common layout (src/data/metadata.py): patients of 2-8
    images with ages, sexes and sites (some missing), lesion ids, and melanoma more likely with age
    and on the back; enough for the context stage to learn something in seconds."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sites = ["torso", "lower extremity", "upper extremity", "head/neck", ""]
    rows = []
    for p in range(n_patients):
        age = float(rng.integers(20, 86)) if rng.random() > 0.05 else np.nan
        sex = ["female", "male", ""][rng.choice(3, p=[0.48, 0.48, 0.04])]
        for i in range(int(rng.integers(2, 9))):
            site = sites[rng.choice(5, p=[0.4, 0.25, 0.2, 0.1, 0.05])]
            risk = 0.02 + 0.15 * (age > 60 if age == age else 0) + 0.3 * (site == "torso")
            rows.append(
                {
                    "image_name": f"ISIC_{p:04d}{i:02d}",
                    "target": int(rng.random() < risk),
                    "patient_id": f"IP_{p:04d}",
                    "lesion_id": f"IL_{p:04d}_{i}",
                    "sex": sex,
                    "age_approx": age + 5 * (i % 2),
                    "anatom_site": site,
                    "diagnosis": "",
                    "source": "generated",
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the service, as deployed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(model_path, **env):
    """The documented command, python src/inference/serve.py, in a real process started from the
    fork server (tests/warm_process.py). Its log goes to a file (a pipe nobody reads would block the
    service once full), which stop_service reads for 5xx answers."""
    import httpx

    port = free_port()
    proc = WarmProcess(
        "src/inference/serve.py",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        cwd=ROOT,
        env={"MODEL_PATH": model_path, "THREADS": "2", **env},
        log=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + HANG_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.log.read_text())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("service did not start")


def stop_service(proc):
    """Stop it, and fail if it ever answered 5xx or logged a traceback: any input gets a 4xx or a 200."""
    proc.terminate()
    proc.wait(timeout=20)
    log = proc.log.read_text(errors="replace")
    proc.remove_files()
    errors = [line for line in log.splitlines() if re.search(r'HTTP/1\.[01]" 5\d\d', line)]
    assert not errors and "Traceback" not in log, log[-3000:]


def refusal_at_start_up(model_path, **env) -> str:
    """Start the app in this process (FastAPI's TestClient runs its lifespan) on a model it must
    refuse, and return the refusal. What a refusal prints in a real process (one `error:` line, no
    traceback) is checked by start_and_fail, under plain uvicorn and under the documented command."""
    from fastapi.testclient import TestClient

    from src.inference.serve import StartupError, app

    with environment({"MODEL_PATH": model_path, **env}), pytest.raises(StartupError) as refused:
        with TestClient(app):
            pass
    return str(refused.value)


def start_and_fail(model_path, *command, **env):
    """Start the service (plain uvicorn unless a command is given) on a model it must refuse: a real
    process from the fork server (tests/warm_process.py), with its exit code, stdout and stderr."""
    command = command or ("-m", "uvicorn", "src.inference.serve:app")
    env = {"MODEL_PATH": model_path, **env}
    return run_warm(*command, "--port", free_port(), cwd=ROOT, env=env, timeout=HANG_TIMEOUT_S)
