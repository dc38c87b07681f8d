"""Prediction over an archive of any size: scores are kept in parts as they are made, an interrupted
run resumes from its finished parts, and torchrun processes share the parts between them.

predict.py keeps OUT.parts/ beside its output while it works: manifest.json (which model, which
inputs, how many rows per part) and one part-NNNNNN.npz per PART_ROWS rows (each row's logits, one
per model, and its error, nothing else: every other column is computed from them and the model, the
same way for a single process, a sharded run and a resumed one, so all three write the same file).
The folder is removed once the output is written. Memory holds the listing of the inputs and one
part's scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.atomic import (
    UNREADABLE_NPZ,
    atomic_write_json,
    read_regular_file,
    remove_stale_temporaries,
    replace_atomically,
)
from src.data.labels import DataError

PART_ROWS = 8192  # rows per part: what an interruption can cost, and the unit shared among processes
MAX_MODELS = 100  # logits kept per row: one per model of an ensemble


class Parts:
    """The OUT.parts/ folder of one prediction."""

    def __init__(self, out: str | Path, manifest: dict, rows: int, part_rows: int = PART_ROWS):
        self.folder = Path(f"{out}.parts")
        self.rows, self.part_rows = rows, part_rows
        self.manifest = {**manifest, "rows": rows, "part_rows": part_rows}
        self.count = max(1, -(-rows // part_rows))

    def open(self, rank: int) -> None:
        """Rank 0 creates the folder or checks that it holds this prediction's parts; the others check."""
        path = self.folder / "manifest.json"
        if path.exists():
            try:
                found = json.loads(read_regular_file(path, 1 << 16))
            except (OSError, ValueError):
                found = None
            if found != self.manifest:
                raise DataError(
                    f"{self.folder}/ holds the unfinished parts of another prediction (another model, input "
                    "or setting): remove it, or choose another --out"
                )
        elif rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, self.manifest)
        if rank == 0:  # before any process writes: what a killed writer left half-written
            remove_stale_temporaries(self.folder)

    def rows_of(self, k: int) -> np.ndarray:
        return np.arange(k * self.part_rows, min(self.rows, (k + 1) * self.part_rows))

    def path(self, k: int) -> Path:
        return self.folder / f"part-{k:06d}.npz"

    def read(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(logits (K models, rows), errors, quality reasons) of part k, or None when it is not done
        (or damaged: scored again)."""
        if not self.path(k).is_file():  # not written yet (or not a plain file: never opened)
            return None
        try:
            with np.load(self.path(k), allow_pickle=False) as z:
                logits, errors, reasons = z["logit"], z["error"], z["reason"]
        except UNREADABLE_NPZ:
            return None
        n = len(self.rows_of(k))
        shapes = logits.ndim == 2 and 1 <= len(logits) <= MAX_MODELS and logits.shape[1] == n
        texts = all(a.shape == (n,) and a.dtype.kind == "U" for a in (errors, reasons))
        if not shapes or not texts or logits.dtype.kind != "f":
            return None
        return logits.astype(np.float64), errors, reasons

    def write(self, k: int, logits: np.ndarray, errors, reasons) -> None:
        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    logit=np.asarray(logits, np.float64),
                    error=np.asarray(errors, str),
                    reason=np.asarray(reasons, str),
                )

        replace_atomically(self.path(k), save)

    def todo(self, rank: int, world_size: int) -> list[int]:
        """This process's share (every world_size-th part) that is not done yet."""
        return [k for k in range(rank, self.count, world_size) if self.read(k) is None]

    def all_scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [self.read(k) for k in range(self.count)]
        missing = [k for k, p in enumerate(parts) if p is None]
        if missing:
            raise DataError(
                f"{len(missing)} parts of {self.folder}/ are missing (first: {self.path(missing[0])})"
            )
        logits, errors, reasons = zip(*parts, strict=True)
        return np.concatenate(logits, axis=1), np.concatenate(errors), np.concatenate(reasons)

    def remove(self) -> None:
        remove_stale_temporaries(self.folder)
        for path in self.folder.glob("part-*.npz"):
            path.unlink(missing_ok=True)
        (self.folder / "manifest.json").unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # something else was put there: left as it is


def inputs_digest(rows: pd.DataFrame) -> str:
    """Which images, in which order: a resumed run must be asked the same rows."""
    digest = hashlib.sha256()
    for column in ("image_name", "path"):
        digest.update(
            "\n".join(rows[column].astype(object).where(rows[column].notna(), "").astype(str)).encode()
        )
    return digest.hexdigest()


def batches_by_part(
    parts: Parts, todo: list[int], present: np.ndarray, batch_size: int
) -> tuple[list[np.ndarray], list[int]]:
    """Batches of readable rows that never cross a part, and each part's number of batches: a
    part is scored in the same batches whoever scores it, so its numbers never depend on sharding."""
    batches, counts = [], []
    for k in todo:
        readable = parts.rows_of(k)[present[parts.rows_of(k)]]
        chunks = [readable[s : s + batch_size] for s in range(0, len(readable), batch_size)]
        batches += chunks
        counts.append(len(chunks))
    return batches, counts


def score_parts(
    batches: Iterator, parts: Parts, todo: list[int], counts: list[int], models: int, on_part: Callable
) -> None:
    """Consume (row positions, (K, batch) logits, good, reasons) batches in order; on_part(k, logits,
    ok, reasons) as each part ends (a part without a readable image gets K rows of NaN; reasons are
    "" where nothing was found or measured)."""
    for k, count in zip(todo, counts, strict=True):
        rows = parts.rows_of(k)
        logits, ok, reasons = None, np.zeros(len(rows), bool), np.full(len(rows), "", dtype=object)
        for _ in range(count):
            index, batch_logits, good, batch_reasons = next(batches)  # batch_logits: (K models, batch)
            if logits is None:
                logits = np.full((len(batch_logits), len(rows)), np.nan)
            logits[:, index - rows[0]], ok[index - rows[0]] = batch_logits, good
            reasons[index - rows[0]] = batch_reasons
        logits = np.full((models, len(rows)), np.nan) if logits is None else logits
        on_part(k, np.where(ok, logits, np.nan), ok, reasons)
