"""Can this image be judged at all? Image-quality measures and a gate fitted on training images.

Every image a model answers for should look, in its basic statistics, like the images it learnt
from. The measures, on the image with its short side at WORK_SIDE pixels:

  short_side     the original's short side in pixels (a thumbnail has no dermoscopic detail)
  sharpness      detail finer than 2 px against detail up to 8 px: std(grey - blur(2)) over
                 std(grey - blur(8)) + 1; a blur removes the first before the second, whatever the
                 image's contrast (a plain Laplacian stopped falling at its 8-bit rounding noise)
  brightness     mean grey level, 0-255
  bright_share   share of pixels at 250 or more in every channel (burnt out)
  dark_share     share of pixels at 5 or less in every channel (black)
  contrast       standard deviation of the grey level
  colourfulness  Hasler and Suesstrunk's colourfulness (0 for a grey image)

fit_gate() sets each rule's threshold from the training images: the GATE_QUANTILE of the measure on
the side where images become unusable, times the rule's factor (further out), never closer than its
floor. check() names the first rule an image breaks. Measured on real images: docs/gate.md.
"""

from __future__ import annotations

import cv2
import numpy as np
from tqdm import tqdm

from src.data.images import ImageDecodeError, check_header, decode_bytes, decoding_pool, read_image_bytes

WORK_SIDE = 256  # short side the measures are taken at
GATE_QUANTILE = 0.005  # the training images' edge each threshold starts from (0.5% on the bad side)
# Training images measured to fit the gate: a 0.5% quantile of 10,000 images is within about 2% of
# that of 21,384 (benchmarks/scale.py's set; docs/gate.md), and measuring took 59 s for those 21,384
# on 2 cores (5.5 ms an image a core): ISIC 2024's 320,000 training images would take 15 minutes
# there, 10,000 take about 28 s.
MAX_GATE_IMAGES = 10_000
# reason -> (measure, unusable side, factor on the training edge, floor), checked in this order.
# The factors were set by looking at docs/gate.md's sets (unseen real dermoscopy accepted, damaged
# copies refused), so those figures are somewhat optimistic for other data.
RULES = {
    "too small": ("short_side", "low", 0.5, 0.0),  # half the smallest training side: upscaled 2x
    "overexposed": ("bright_share", "high", 1.5, 0.05),  # at least 5% burnt-out pixels
    "too bright": ("brightness", "high", 1.07, 0.0),
    "underexposed": ("dark_share", "high", 1.5, 0.05),
    "too dark": ("brightness", "low", 0.67, 0.0),  # before contrast and colour, which darkness lowers
    "nearly uniform": ("contrast", "low", 0.5, 0.0),
    "greyscale": ("colourfulness", "low", 0.5, 0.0),
    "blurred": ("sharpness", "low", 0.8, 0.0),
}


def measures(rgb: np.ndarray, short_side: int | None = None) -> dict[str, float]:
    """The measures of one RGB uint8 image (any size); short_side: the original's, when the image
    was decoded reduced."""
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / min(h, w)
    if scale != 1:  # the same scale for every image: the sharpness compares fixed pixel distances
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    contrast = float(grey.std())
    fine = (grey - cv2.GaussianBlur(grey, (0, 0), 2)).std()
    coarse = (grey - cv2.GaussianBlur(grey, (0, 0), 8)).std()
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    rg, yb = r - g, (r + g) / 2 - b
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "short_side": float(short_side or min(h, w)),
        "sharpness": float(fine / (coarse + 1.0)),
        "brightness": float(grey.mean()),
        "bright_share": float((rgb.min(axis=2) >= 250).mean()),
        "dark_share": float((rgb.max(axis=2) <= 5).mean()),
        "contrast": contrast,
        "colourfulness": float(colourfulness),
    }


def decode_measured(path, decode_side: int) -> tuple[np.ndarray, dict[str, float]]:
    """(RGB image, its measures) of an image file or HDF5 member: see decode_measured_bytes."""
    return decode_measured_bytes(read_image_bytes(path), decode_side, str(path))


def decode_measured_bytes(data: bytes, decode_side: int, name: str) -> tuple[np.ndarray, dict[str, float]]:
    """(RGB image, its measures): decoded as the model's input is (short side decode_side, reduced
    JPEG decoding), measured with the original's short side, so that fitting and checking see the
    same pixels; ImageDecodeError when it cannot be read."""
    width, height = check_header(data, name)
    rgb = decode_bytes(data, decode_side, name)
    return rgb, measures(rgb, min(width, height))


def measure_file(path, decode_side: int = WORK_SIDE) -> dict[str, float]:
    return decode_measured(path, decode_side)[1]


def _measure_or_none(job: tuple[str, int]) -> dict[str, float] | None:
    try:
        return measure_file(*job)
    except (ImageDecodeError, OSError, ValueError):
        return None


def gate_sample(paths, seed: int = 0) -> list[str]:
    """The training images the gate is fitted on: all, or a seeded sample of MAX_GATE_IMAGES."""
    paths = [str(p) for p in paths]
    if len(paths) <= MAX_GATE_IMAGES:
        return paths
    chosen = np.random.default_rng(seed).choice(len(paths), MAX_GATE_IMAGES, replace=False)
    return [paths[i] for i in np.sort(chosen)]


def fit_gate_on_files(paths, decode_side: int, workers: int = 0, progress: bool = True) -> dict[str, dict]:
    """fit_gate on the measures of image files (the training split, or a sample of it: gate_sample),
    one process per core; unreadable files are left out."""
    jobs = [(p, decode_side) for p in gate_sample(paths)]
    with decoding_pool(workers) as pool:
        found = list(tqdm(pool.imap(_measure_or_none, jobs, chunksize=32), total=len(jobs), desc="gate",
                          unit="img", disable=not progress, leave=False))  # fmt: skip
    rows = [r for r in found if r is not None]
    if not rows:
        raise ValueError("no readable training image to fit the quality gate on")
    return fit_gate(rows)


def gate_problem(gate) -> str:
    """What is wrong with a gate read from a file ("" when nothing): only known rules, each on its
    own measure and side, with a finite threshold."""
    if not isinstance(gate, dict) or not gate or len(gate) > len(RULES):
        return "quality_gate is not a table of rules"
    for reason, rule in gate.items():
        if reason not in RULES or not isinstance(rule, dict):
            return f"quality_gate has an unknown rule {str(reason)[:40]!r}"
        measure, side = RULES[reason][:2]
        threshold = rule.get("threshold")
        finite = (
            isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and np.isfinite(threshold)
        )
        if rule.get("measure") != measure or rule.get("side") != side or not finite:
            return f"quality_gate rule {reason!r} is not ({measure}, {side}, a finite threshold)"
    return ""


def fit_gate(rows: list[dict[str, float]]) -> dict[str, dict]:
    """reason -> {"measure", "side", "threshold"} fitted on the training images' measures."""
    gate = {}
    for reason, (measure, side, factor, floor) in RULES.items():
        values = np.array([r[measure] for r in rows], dtype=np.float64)
        edge = float(np.quantile(values, GATE_QUANTILE if side == "low" else 1 - GATE_QUANTILE))
        threshold = max(edge * factor, floor)
        gate[reason] = {"measure": measure, "side": side, "threshold": threshold}
    return gate


def check(gate: dict[str, dict], values: dict[str, float]) -> str:
    """The first rule the image breaks ("" when it is assessable)."""
    for reason, rule in gate.items():
        v = values[rule["measure"]]
        if (rule["side"] == "low" and v < rule["threshold"]) or (
            rule["side"] == "high" and v > rule["threshold"]
        ):
            return reason
    return ""
