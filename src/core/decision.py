"""The one answer per lesion: its probability, the threshold it is held against, and the decision.

Every place that shows a result (predict.py's CSV, /predict, /triage, the page) builds it here, from
the stage that gives the answer: the context stage when one is loaded (metadata and the patient's
other lesions), else the image model. The other figure may be shown beside it, named as secondary.
"""

from __future__ import annotations

ABOVE, BELOW = "above threshold", "below threshold"
STAGES = ("image", "context")  # the image model alone; the context stage (metadata and the patient)


def decision(probability: float, threshold: float) -> str:
    return ABOVE if probability >= threshold else BELOW


def answer(probability: float, threshold: float, stage: str) -> dict:
    """One lesion's answer: what to show, and which stage it came from."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    label = decision(probability, threshold)
    return {
        "probability": float(probability),
        "decision": label,
        "label": int(label == ABOVE),
        "threshold": float(threshold),
        "stage": stage,
    }
