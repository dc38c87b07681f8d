"""One forked child per case, for fuzz runs: a crash or a hang in the child cannot take the caller
down, and comes back as an outcome. Imports nothing heavy, so a caller that is itself a small
process (tests/context_fuzz.py, tests/hdf5_fuzz.py) forks in milliseconds."""

import multiprocessing
import os

TIMEOUT_S = 20


def _child(fn, args, conn):
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # LightGBM prints its fatal errors to stdout, which carries the results
    os.dup2(quiet, 2)
    try:
        conn.send(fn(*args))
    except BaseException as e:  # an exception is an answer too; only a dead process is a crash
        conn.send({"outcome": "exception", "reason": f"{type(e).__name__}: {e}"})


def in_child(fn, *args) -> dict:
    """fn(*args) in a forked child; {"outcome": "crash" | "hang" | "exception", ...} when it fails."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(fn, args, send))
    process.start()
    send.close()
    try:
        answer = receive.recv() if receive.poll(TIMEOUT_S) else None
    except EOFError:  # the child died without answering
        answer = None
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
        return {"outcome": "hang"}
    if answer is None:
        return {"outcome": "crash", "reason": f"exit code {process.exitcode}"}
    return answer
