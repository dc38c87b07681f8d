"""Write files so that a crash never leaves a half-written one (temporary file, then os.replace), and
read a file a user hands in without waiting forever on a FIFO or swallowing a file of any size."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

# What np.load raises on a damaged or foreign .npz (a file that starts like a zip and is not one
# raises BadZipFile, which is no OSError): such a stored file is rebuilt, never trusted.
UNREADABLE_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def temporary_beside(path: Path) -> str:
    """A new temporary file next to `path`, with the permissions a plain open() would give
    (mkstemp makes it owner-only, which would hide checkpoints from e.g. a service's user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def replace_atomically(path: str | Path, write) -> None:
    """Call write(temporary_path), then rename it over `path`; on any failure `path` is untouched."""
    tmp = temporary_beside(Path(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files that a killed writer left in `folder` (a kill -9 mid-save leaves
    one behind). Only for a folder that no other process is writing to: the caller holds its lock."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A FIFO, device or folder is refused before
    any read (opening a FIFO waits for a writer forever), and so is a larger file. OSError says why."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise OSError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{path} is larger than the {max_bytes:,} bytes such a file may have")
    return data
