"""Does an image look like the images the model learnt from? A distance in the model's own features.

No pretrained network is at hand offline, so the only description of "a dermoscopy image" available
is the trained model's: the pooled features its head reads (src/core/model.py). fit_familiarity()
fits a probabilistic PCA to the training images' features: the mean, the FAMILIARITY_DIMS main
directions with their variances, and one variance for everything else. An image's distance is its
Mahalanobis distance under that Gaussian, per feature dimension (about 1 for a training image):
far along a main direction, or off the main directions altogether (the residual), both count.
The threshold is set on the validation split, so that FLAGGED_SHARE of its images are flagged;
`unfamiliarity` = distance / threshold, above 1 means "unlike training images".

Why this method: it is one forward pass (the features come with the logit), a few hundred KB in the
checkpoint (not every training feature, as a nearest-neighbour distance would need), and it needs
nothing but the model trained here. Measured on real sets: docs/gate.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

UNFAMILIAR = "unlike training images"  # the reason shown where an image is refused
FAMILIARITY_DIMS = 64  # main directions kept; the rest share one variance
FLAGGED_SHARE = 0.015  # of the validation split flagged at the threshold (the issue asks 1-2%)
MAX_FIT_IMAGES = 5000  # training images whose features are fitted on (a 64-direction PCA needs few)
KEYS = ("mean", "components", "variances", "residual_variance", "threshold")


def fit_familiarity(train: np.ndarray, validation: np.ndarray, share: float = FLAGGED_SHARE) -> dict:
    """The checkpoint's `familiarity` entry from (n, D) training and (m, D) validation features."""
    train = np.asarray(train, np.float64)
    n, d = train.shape
    if n < 8 or len(validation) == 0:
        raise ValueError(
            f"too few images to fit the familiarity distance ({n} training, {len(validation)} validation)"
        )
    mean = train.mean(axis=0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    variances = s**2 / (n - 1)
    k = int(min(FAMILIARITY_DIMS, d - 1, n // 4))
    total = float(variances.sum())
    rest = max((total - variances[:k].sum()) / max(d - k, 1), total * 1e-6 / d, 1e-12)
    fitted = {
        "mean": torch.tensor(mean, dtype=torch.float32),
        "components": torch.tensor(vt[:k], dtype=torch.float32),
        "variances": torch.tensor(np.maximum(variances[:k], rest), dtype=torch.float32),
        "residual_variance": float(rest),
        "threshold": 1.0,
    }
    distances = unfamiliarity(fitted, validation)  # the distance itself while the threshold is 1
    fitted["threshold"] = float(max(np.quantile(distances, 1 - share), 1e-6))
    fitted.update({"flagged_share": share, "training_images": n, "validation_images": len(validation)})
    return fitted


def unfamiliarity(fitted: dict, features) -> np.ndarray:
    """(N,) distance over the threshold of (N, D) features (numpy or torch); above 1: flagged."""
    with torch.no_grad():
        return Familiarity(fitted)(torch.as_tensor(np.asarray(features), dtype=torch.float32)).numpy()


class Familiarity(nn.Module):
    """features (N, D) -> unfamiliarity (N,): the distance over the threshold (above 1: flagged)."""

    def __init__(self, fitted: dict):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(fitted["mean"], dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(fitted["components"], dtype=torch.float32))
        self.register_buffer("variances", torch.as_tensor(fitted["variances"], dtype=torch.float32))
        self.residual_variance = float(fitted["residual_variance"])
        self.threshold = float(fitted["threshold"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features.float() - self.mean
        along = centred @ self.components.T
        residual = (centred.square().sum(1) - along.square().sum(1)).clamp_min(0)
        squared = (along.square() / self.variances).sum(1) + residual / self.residual_variance
        return (squared / centred.shape[1]).sqrt() / self.threshold


def familiarity_problem(fitted, feature_size: int | None) -> str:
    """What is wrong with a `familiarity` entry read from a file ("" when nothing): the fitted arrays
    with matching shapes for the model's feature size, finite, positive variances and threshold."""
    if not isinstance(fitted, dict) or any(k not in fitted for k in KEYS):
        return f"familiarity is not a table of {', '.join(KEYS)}"
    try:
        mean, comps, var = (torch.as_tensor(fitted[k], dtype=torch.float32) for k in KEYS[:3])
        scalars = np.array([fitted["residual_variance"], fitted["threshold"]], dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        return "familiarity holds something other than numbers"
    d = feature_size or mean.numel()
    k = var.numel()
    if mean.shape != (d,) or comps.shape != (k, d) or var.shape != (k,) or k >= d:
        return f"familiarity's shapes do not fit the model's {d} features"
    finite = all(bool(torch.isfinite(t).all()) for t in (mean, comps, var)) and np.isfinite(scalars).all()
    if not finite or bool((var <= 0).any()) or (scalars <= 0).any():
        return "familiarity has a non-finite or non-positive value"
    return ""


def reasons_with_familiarity(reasons, unfamiliarity) -> np.ndarray:
    """The quality gate's reasons ("" = assessable), with UNFAMILIAR where the quality gate passed an
    image that is unlike the training images; unfamiliarity None: the model has no distance fitted."""
    reasons = np.asarray(reasons, dtype=object)
    if unfamiliarity is None:
        return reasons
    far = np.asarray(unfamiliarity) > 1
    return np.where((reasons == "") & far, UNFAMILIAR, reasons)
