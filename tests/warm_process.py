"""Real processes for the tests that need one (a running service, a run to kill or interrupt),
started in well under a second instead of the 5-7 s a new interpreter spends importing torch.

multiprocessing's fork server is a clean interpreter that imports the heavy libraries once and then
forks one child per request. The child runs the script as `python SCRIPT ARGS` would: as
`__main__`, with its own argv, working folder, environment and stdout/stderr files, so its signals,
exit code and output are its own. Project modules are not preloaded, because they read settings
(MAX_UPLOAD_MB, THREADS, ...) from the environment when imported. What only a new interpreter shows
(that `python src/training/train.py` finds the project from any folder) is still checked with one
(helpers.run_process)."""

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

# Imported once by the fork server; torch, cv2 and pandas alone are about 5 s of every start.
PRELOADED = ["numpy", "torch", "torchvision", "cv2", "pandas", "sklearn.model_selection", "PIL.Image"]
PRELOADED += ["fastapi", "uvicorn", "multipart", "onnxruntime", "h5py", "tqdm"]
_started: list["WarmProcess"] = []


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def start_server() -> None:
    """Start the fork server now: it imports in the background while the first tests run."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _new_file(suffix: str) -> Path:
    fd, path = tempfile.mkstemp(prefix="warm-", suffix=suffix)
    os.close(fd)
    return Path(path)


def _run_as_main(args: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """In the forked child: become `python ARGS` (a script path, or -m MODULE)."""
    # A new interpreter's multiprocessing start method (a semaphore made under "forkserver" would
    # outlive a killed child in the shared resource tracker, which then warns at the end of the run).
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    out = os.open(stdout, os.O_WRONLY | os.O_APPEND)
    err = out if stderr == stdout else os.open(stderr, os.O_WRONLY | os.O_APPEND)
    os.dup2(out, 1)
    os.dup2(err, 2)
    # Line-buffered, as on a terminal: a log read while the process runs (or after a kill) is complete.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        sys.path.insert(0, str(Path(args[0]).parent))  # as `python SCRIPT` puts the script's folder first
        runpy.run_path(args[0], run_name="__main__")


class WarmProcess:
    """A subprocess.Popen look-alike (pid, poll, wait, send_signal, terminate, kill, communicate)
    whose stdout and stderr go to files: `log` when both share one."""

    def __init__(self, *args, cwd, env=None, log: bool = False):
        args = [str(a) for a in args]
        self.stdout_path = _new_file(".out")
        self.stderr_path = self.stdout_path if log else _new_file(".err")
        self.log = self.stdout_path if log else None
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in (env or {}).items()}}
        self._process = _context().Process(
            target=_run_as_main,
            args=(args, str(cwd), full_env, str(self.stdout_path), str(self.stderr_path)),
        )
        self._process.start()
        self.pid, self.args = self._process.pid, args
        _started.append(self)

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, sig) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def communicate(self, timeout=None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def output(self) -> tuple[str, str]:
        out = self.stdout_path.read_text(errors="replace")
        return out, out if self.log else self.stderr_path.read_text(errors="replace")

    def remove_files(self) -> None:
        for path in {self.stdout_path, self.stderr_path}:
            path.unlink(missing_ok=True)


def run_warm(*args, cwd, env=None, timeout=None) -> subprocess.CompletedProcess:
    """`python ARGS` to the end, from the fork server: exit code, stdout and stderr."""
    proc = WarmProcess(*args, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout)
    finally:
        proc.kill()
        proc.remove_files()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@atexit.register  # registered after multiprocessing's own, so it runs first: that one would wait for them
def _kill_leftovers() -> None:
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.remove_files()
