"""The fold models of oof.py as one model: OUT/ensemble.json names them and holds the calibration
and threshold fitted on their out-of-fold logits (the only scores of those models on images they
did not train on). Written by src/training/oof.py, read by src/inference/predictor.py and
src/training/evaluate.py.

Averaging K models' logits narrows their spread a little compared with one model's, so the
calibration fitted on single-model out-of-fold logits is slightly conservative for the mean; it is
the one held-out calibration the folds have.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from src.core import metrics as M
from src.core.checkpoint import CheckpointError
from src.core.decision import refer_rule, refer_rule_problem
from src.data.atomic import atomic_write_json, read_regular_file

FORMAT = "melanoma-fold-ensemble/1"
FILE = "ensemble.json"
MAX_MEMBERS = 100
MAX_FILE_BYTES = 1 << 20


def write_ensemble(
    out: Path, members: list[Path], logits: np.ndarray, targets: np.ndarray, tta: bool
) -> dict:
    """OUT/ensemble.json for these member checkpoints, calibrated on their out-of-fold logits."""
    temperature, bias, threshold = M.fit_operating_point(logits, targets)
    spec = {
        "format": FORMAT,
        "members": [Path(m).resolve().relative_to(out.resolve()).as_posix() for m in members],
        "calibration_tta": bool(tta),
        "temperature": float(temperature),
        "logit_bias": float(bias),
        "threshold": float(threshold),
        "threshold_rule": f"highest threshold with out-of-fold sensitivity >= {M.MIN_SENSITIVITY}",
        "calibrated_on": f"out-of-fold logits of {len(targets):,} images ({len(members)} folds)",
        "refer_rule": refer_rule(),
    }
    atomic_write_json(out / FILE, spec)
    return spec


def read_ensemble(folder: str | Path) -> dict:
    """The checked contents of FOLDER/ensemble.json; CheckpointError says what is wrong. Members are
    plain relative paths inside the folder: the file can never make the reader open anything else."""
    path = Path(folder) / FILE
    if not path.exists():
        raise CheckpointError(
            f"{folder} is a folder without {FILE}: give a checkpoint file, or the folder of "
            "oof.py (run oof.py again with the same settings: it collects finished folds and writes it)"
        )
    try:
        spec = json.loads(read_regular_file(path, MAX_FILE_BYTES))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a readable ensemble file ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ensemble file (format {FORMAT} expected)")
    members = spec.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise CheckpointError(f"{path}: 'members' must list 1 to {MAX_MEMBERS} checkpoint files")
    for m in members:
        if not isinstance(m, str) or not _inside(m):
            raise CheckpointError(f"{path}: member {str(m)[:80]!r} is not a relative path inside the folder")
    numbers = ("temperature", "logit_bias", "threshold")
    if not all(M.finite_number(spec.get(k)) for k in numbers) or spec["temperature"] <= 0:
        raise CheckpointError(f"{path}: temperature (> 0), logit_bias and threshold must be finite numbers")
    if not 0 <= spec["threshold"] <= 1 or not isinstance(spec.get("calibration_tta"), bool):
        raise CheckpointError(f"{path}: threshold must be in 0..1 and calibration_tta true or false")
    if "refer_rule" in spec and refer_rule_problem(spec["refer_rule"]):
        raise CheckpointError(f"{path}: {refer_rule_problem(spec['refer_rule'])}")
    return spec


def load_members(folder: str | Path, spec: dict, load) -> list:
    """load(path) for each member's checkpoint file, each checked to stay inside the folder once
    links are followed; a CheckpointError names the member."""
    folder, loaded = Path(folder), []
    for name in spec["members"]:
        if not (folder / name).resolve().is_relative_to(folder.resolve()):
            raise CheckpointError(f"{folder}: member {name} leads outside the folder")
        try:
            loaded.append(load(folder / name))
        except CheckpointError as e:
            raise CheckpointError(f"ensemble {folder}, member {name}: {e}") from None
    return loaded


def _inside(member: str) -> bool:
    parts = PurePosixPath(member).parts
    return (
        bool(parts)
        and not member.startswith("/")
        and ".." not in parts
        and "\\" not in member
        and "\0" not in member
    )
