"""The one checkpoint writer and loader.

Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(..., weights_only=True)`: opening a checkpoint never runs pickled code.
Writes go to a temporary file and are renamed into place, so a crash leaves the old file intact.
"""

from __future__ import annotations

import hashlib
import pickle
import platform
import zipfile
from pathlib import Path

import torch
import torchvision

from src.core.decision import refer_rule_problem
from src.core.familiarity import familiarity_problem
from src.core.metrics import finite_number
from src.core.model import ARCHITECTURES, FEATURE_SIZES, IMG_SIZE_RANGE, MELANOMA, MelanomaNet, size_problem
from src.data.atomic import replace_atomically
from src.data.quality import gate_problem
from src.data.transforms import FITS
from src.errors import ProjectError

FORMAT = "melanoma-classifier/1"
MAX_CLASSES = 50  # diagnoses a head may have (ISIC 2019 has 9)
REQUIRED_KEYS = ("format", "arch", "model_state", "img_size", "mean", "std")


class CheckpointError(ProjectError):
    pass


def versions() -> dict:
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def weights_digest(state: dict) -> str:
    """SHA-256 of the weights alone (names and raw bytes), so a model's version stays the same when
    evaluation adds calibration or a threshold to its checkpoint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _WriteFailureRecorder:
    """A file wrapper that remembers the OSError of a failed write. torch.save reports a full disk or
    a file-size limit as an opaque RuntimeError from its C++ writer ("unexpected pos 704 vs 598");
    the OSError lets the caller say what happened and where."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write `obj` with torch.save, atomically; a failed write raises its OSError (e.g. ENOSPC)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            sink = _WriteFailureRecorder(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None

    replace_atomically(path, write)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate one of our checkpoints; CheckpointError with a clear reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values; refusing to "
            f"load it (weights_only=True). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupted or truncated?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (expected format {FORMAT!r}); "
            f"use one written by src/training/train.py"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it may come from an incompatible version")
    check_settings(ckpt, path)
    return ckpt


def check_settings(s: dict, source) -> None:
    """Every field that prediction reads from a checkpoint or ONNX metadata, checked once, so that a
    damaged or hand-edited file stops a command with one line instead of failing on every request."""
    problems = []
    if s.get("arch") not in ARCHITECTURES:
        problems.append(f"arch {s.get('arch')!r} is not one of {', '.join(ARCHITECTURES)}")
    elif isinstance(s.get("img_size"), int) and size_problem(s["arch"], s["img_size"]):
        problems.append(size_problem(s["arch"], s["img_size"]))
    if s.get("input_fit", "crop") not in FITS or not isinstance(s.get("colour_constancy", False), bool):
        problems.append(f"input_fit must be one of {FITS} and colour_constancy true or false")
    classes = s.get("classes")
    if classes is not None and not (
        isinstance(classes, (list, tuple))
        and 2 <= len(classes) <= MAX_CLASSES
        and all(isinstance(c, str) and 0 < len(c) <= 60 for c in classes)
        and MELANOMA in classes
    ):
        problems.append(f"classes is not a list of 2 to {MAX_CLASSES} diagnosis names including {MELANOMA!r}")
    size = s.get("img_size")
    if not (
        isinstance(size, int)
        and not isinstance(size, bool)
        and IMG_SIZE_RANGE[0] <= size <= IMG_SIZE_RANGE[1]
    ):
        problems.append(
            f"img_size {size!r} is not a whole number of pixels in {IMG_SIZE_RANGE[0]}..{IMG_SIZE_RANGE[1]}"
        )
    for key in ("mean", "std"):
        v = s.get(key)
        if not (
            isinstance(v, (list, tuple)) and len(v) == 3 and all(finite_number(x) and 0 <= x <= 1 for x in v)
        ):
            problems.append(f"{key} {v!r} is not 3 numbers in 0..1 (one per RGB channel)")
    if isinstance(s.get("std"), (list, tuple)) and any(finite_number(x) and x == 0 for x in s["std"]):
        problems.append("std has a zero (division by zero)")
    if "threshold" in s and not (finite_number(s["threshold"]) and 0 <= s["threshold"] <= 1):
        problems.append(f"threshold {s['threshold']!r} is not a probability in 0..1")
    if "temperature" in s and not (finite_number(s["temperature"]) and s["temperature"] > 0):
        problems.append(f"temperature {s['temperature']!r} is not a positive number")
    if "logit_bias" in s and not finite_number(s["logit_bias"]):
        problems.append(f"logit_bias {s['logit_bias']!r} is not a number")
    problems += fitted_checks_problems(s)
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source} has invalid settings: {'; '.join(problems)}")


def fitted_checks_problems(s: dict) -> list[str]:
    """What is wrong with what evaluate.py fits (the quality gate, the familiarity distance, the
    refer rule) or an export carries of it; empty strings where nothing is."""
    problems = []
    if s.get("quality_gate") is not None:
        problems.append(gate_problem(s["quality_gate"]))
    if s.get("familiarity") is not None:
        problems.append(familiarity_problem(s["familiarity"], FEATURE_SIZES.get(s.get("arch"))))
    if "familiarity_threshold" in s and not (
        finite_number(s["familiarity_threshold"]) and s["familiarity_threshold"] > 0
    ):
        problems.append("familiarity_threshold is not a positive number")
    if s.get("refer_rule") is not None:
        problems.append(refer_rule_problem(s["refer_rule"]))
    return problems


def model_from_checkpoint(ckpt: dict) -> MelanomaNet:
    model = MelanomaNet(
        ckpt["arch"], ckpt["mean"], ckpt["std"], img_size=ckpt["img_size"], classes=ckpt.get("classes")
    )
    try:
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, TypeError, AttributeError) as e:  # wrong shapes, or not a state dict at all
        raise CheckpointError(
            f"checkpoint weights do not fit {ckpt['arch']}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval()


def load_model(path: str | Path, map_location="cpu") -> tuple[MelanomaNet, dict]:
    ckpt = load_checkpoint(path, map_location)
    return model_from_checkpoint(ckpt), ckpt


def synthetic_training_data(settings: dict) -> bool:
    """True when the model learned from `train.py --demo`'s SYNTHETIC drawings: read from the run's own
    config (DEMO), or from the flag an ONNX export carries; never guessed from a path."""
    if "synthetic_training_data" in settings:
        return bool(settings["synthetic_training_data"])
    return bool((settings.get("config") or {}).get("DEMO", False))


def calibration_tta(settings: dict, tta: bool | None, source) -> bool:
    """Whether to average the 8 flips: as the saved calibration was fitted. A threshold fitted on
    TTA-averaged logits does not hold for single-view ones (nor the reverse), so a request for the
    other kind is refused; None follows the calibration."""
    fitted = bool(settings.get("calibration_tta", False))
    if tta is None:
        return fitted
    if settings.get("calibrated_on") and tta != fitted:
        kind = "TTA-averaged (8 flips)" if fitted else "single-view"
        raise CheckpointError(
            f"{source}: its threshold and calibration were fitted on {kind} logits, so predictions must "
            f"use the same ({'--tta' if fitted else 'no --tta'}); re-run evaluate.py "
            f"{'without' if fitted else 'with'} --tta to calibrate for the other"
        )
    return tta
