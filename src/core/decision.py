"""The one answer per lesion: its probability, the threshold it is held against, and the decision.

Every place that shows a result (predict.py's CSV, /predict, /triage, the page) builds it here, from
the stage that gives the answer: the context stage when one is loaded (metadata and the patient's
other lesions), else the image model. The other figure may be shown beside it, named as secondary.

A decision is one of three: "below threshold", "above threshold", or "refer" (a person must look)
when the image cannot be assessed (src/data/quality.py, src/core/familiarity.py) or when the models
of a fold ensemble, or the 8 TTA views, disagree about which side of the threshold it lies: their
logits' mean plus or minus `band` standard deviations straddles it. The rule is saved beside the
threshold (checkpoint, ensemble.json) and shown on the model card.
"""

from __future__ import annotations

import numpy as np

from src.core.metrics import finite_number

ABOVE, BELOW, REFER = "above threshold", "below threshold", "refer"
STAGES = ("image", "context")  # the image model alone; the context stage (metadata and the patient)
REFER_BAND = 1.0  # standard deviations of the models' and views' logits around their mean


def refer_rule(band: float = REFER_BAND) -> dict:
    return {
        "band": float(band),
        "text": f"refer when the image cannot be assessed, or when the logits of the fold models and "
        f"TTA views, mean +/- {band:g} standard deviation, straddle the threshold",
    }


def refer_rule_problem(rule) -> str:
    if not (isinstance(rule, dict) and finite_number(rule.get("band")) and rule["band"] >= 0):
        return "refer_rule is not {band: a number >= 0}"
    return ""


def margins(probability, threshold: float, spread=None, temperature: float = 1.0) -> np.ndarray:
    """How far each answer is from the threshold: in standard deviations of the logits behind it
    (spread, in raw logit units; calibration divides logits by the temperature), infinite where
    there is no spread (nothing to straddle); without `spread` at all, in logit units."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-12, 1 - 1e-12)
    t = min(max(threshold, 1e-12), 1 - 1e-12)
    distance = np.abs(np.log(p / (1 - p)) - np.log(t / (1 - t)))
    if spread is None:
        return distance
    scale = np.asarray(spread, dtype=np.float64) / temperature
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, distance / scale, np.inf)  # NaN or 0: no spread


def decisions(probability, threshold: float, assessable=True, uncertain=False) -> np.ndarray:
    """The decision for each answer (arrays or scalars)."""
    p = np.asarray(probability, dtype=np.float64)
    side = np.where(p >= threshold, ABOVE, BELOW)
    refer = ~np.asarray(assessable, dtype=bool) | np.asarray(uncertain, dtype=bool)
    return np.where(refer, REFER, side).astype(object)


def uncertain(probability, threshold: float, spread, temperature: float, rule: dict | None) -> np.ndarray:
    """True where the band of the rule straddles the threshold (never without a spread)."""
    if rule is None or spread is None:
        return np.zeros(np.shape(probability), dtype=bool)
    return margins(probability, threshold, spread, temperature) < rule["band"]


def answer(
    probability: float, threshold: float, stage: str, assessable: bool = True, uncertain: bool = False
) -> dict:
    """One lesion's answer: what to show, and which stage it came from. `label` is the threshold's
    side (1 = above) even when the decision is refer; the probability is kept, marked by the rest."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return {
        "probability": float(probability),
        "decision": str(decisions(probability, threshold, assessable, uncertain)),
        "label": int(probability >= threshold),
        "threshold": float(threshold),
        "stage": stage,
    }
