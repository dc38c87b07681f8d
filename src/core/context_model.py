"""The context model: K boosted-tree models on metadata, the patient's other lesions and the image
score, saved as JSON with LightGBM's text models inside and evaluated by src/core/trees.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import metrics as M
from src.core.trees import Forest
from src.data.atomic import atomic_write_json, read_regular_file
from src.data.metadata import COLUMNS, split_groups
from src.data.patient_context import context_features, ugly_duckling_rank
from src.errors import ProjectError

FORMAT = "melanoma-context-model/1"
MAX_MODEL_BYTES = 64 * 1024 * 1024  # the 5-fold model of the real ISIC 2020 labels is 2.8 MB
MAX_BOOSTERS = 100  # one per fold
# Patient-relative features computed over fewer lesions than this are not the patient history the
# trees were trained on: on the real ISIC 2020 labels the context stage's out-of-fold AUC was 0.675
# with 1 lesion per request, 0.667 with 2, 0.704 with 4, 0.731 with 8 and 0.796 with all of them
# (age, sex and site alone reach about 0.67; docs/context.md). From 8 on, the patient adds to the
# metadata; below it, every answer of the context stage carries a note saying so.
MIN_LESIONS_FOR_CONTEXT = 8


def few_lesions_note(lesions: int) -> str:
    """Why the context stage's answer for a patient with this many lesions is to be read with care
    ("" from MIN_LESIONS_FOR_CONTEXT on)."""
    if lesions >= MIN_LESIONS_FOR_CONTEXT:
        return ""
    return (
        f"{lesions} lesion{'s' if lesions != 1 else ''} of this patient scored together: the context "
        f"stage compares a patient's lesions, and with fewer than {MIN_LESIONS_FOR_CONTEXT} it adds "
        "little beyond age, sex and site (docs/context.md); weigh the image model's probability"
    )


class ContextError(ProjectError):
    """Bad input or a bad model file; the message is meant for the user."""


@dataclass
class ContextModel:
    """K boosted-tree models (one per fold, margins averaged) and what turns metadata into their inputs."""

    boosters: list[Forest]
    features: list[str]
    sites: list[str]
    measurements: list[str]
    lesion_features: bool
    uses_image_score: bool
    temperature: float = 1.0
    bias: float = 0.0
    threshold: float = 0.5
    info: dict | None = None

    def features_for(self, table: pd.DataFrame, image_logit=None) -> pd.DataFrame:
        """The trees' inputs: the one feature path of training, prediction and serving."""
        if self.uses_image_score and image_logit is None:
            raise ContextError("this context model uses the image score: give image logits too")
        f = context_features(
            table.drop(columns=["target"], errors="ignore"),
            self.sites,
            image_logit if self.uses_image_score else None,
            self.lesion_features,
            self.measurements,
        )
        return f.reindex(columns=self.features) if self.features else f

    def margins(self, table: pd.DataFrame, image_logit=None) -> np.ndarray:
        x = self.features_for(table, image_logit).to_numpy(dtype=np.float64)
        return np.mean([b.raw_score(x) for b in self.boosters], axis=0)

    def probabilities(self, table: pd.DataFrame, image_logit=None) -> np.ndarray:
        return M.calibrated(self.margins(table, image_logit), self.temperature, self.bias)

    def score(self, table: pd.DataFrame, image_logit=None) -> pd.DataFrame:
        """Per row: the calibrated risk and the "ugly duckling" rank (1 = the image score that stands
        out most among the same patient's lesions); the decision at `threshold` is made by
        src/core/decision.py, like every other."""
        t = table.reset_index(drop=True)
        p = self.probabilities(t, image_logit)
        rank = ugly_duckling_rank(image_logit if image_logit is not None else p, split_groups(t))
        return pd.DataFrame({"probability": p, "patient_rank": rank})

    def save(self, path: Path) -> None:
        body = {k: v for k, v in self.__dict__.items() if k != "boosters"}
        body["boosters"] = [b.text for b in self.boosters]
        atomic_write_json(path, {"format": FORMAT, **body})

    @classmethod
    def load(cls, path: str | Path) -> ContextModel:
        """JSON with LightGBM's text models inside, read and checked here (src/core/trees.py):
        nothing in the file runs code or reaches LightGBM's parser, and a file that could give
        anything but a finite risk is refused with the reason (docs/serving.md lists the rules)."""
        try:
            body = json.loads(read_regular_file(path, MAX_MODEL_BYTES))
            if not isinstance(body, dict) or body.get("format") != FORMAT:
                raise ContextError(f"{path} is not a context model ({FORMAT})")
            fields = checked_fields(body)
            model = cls(**fields, boosters=[Forest.parse(text) for text in body["boosters"]])
            model.check_features()
            return model
        except (OSError, ValueError, RecursionError) as e:  # TreeModelError and bad JSON are ValueErrors
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ContextError(f"cannot load context model {path}: {reason}") from None

    def check_features(self) -> None:
        """The trees' features are the ones this version computes from metadata, in the same order."""
        probe = pd.DataFrame({c: [""] for c in COLUMNS}).drop(columns="target")
        logit = np.zeros(1) if self.uses_image_score else None
        computed = list(
            context_features(probe, self.sites, logit, self.lesion_features, self.measurements).columns
        )
        if computed != self.features:
            raise ValueError("its feature list is not the one these settings compute from metadata")
        for k, booster in enumerate(self.boosters):
            if booster.feature_names != self.features:
                raise ValueError(f"booster {k} uses other features than the model lists")


def checked_fields(body: dict) -> dict:
    """The model's settings from its file, each of the right type and range (boosters aside)."""
    fields = {k: v for k, v in body.items() if k not in ("format", "boosters")}
    expected = {"features", "sites", "measurements", "lesion_features", "uses_image_score"}
    expected |= {"temperature", "bias", "threshold", "info"}
    if set(fields) != expected or "boosters" not in body:
        raise ValueError(f"its fields must be exactly: boosters, {', '.join(sorted(expected))}")
    texts = {"boosters": body["boosters"], **{k: fields[k] for k in ("features", "sites", "measurements")}}
    for key, values in texts.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"'{key}' must be a list of texts")
        if key != "boosters" and (
            len(set(values)) != len(values) or not all(v.isprintable() for v in values)
        ):
            raise ValueError(f"'{key}' must list distinct printable names")
    if not 1 <= len(body["boosters"]) <= MAX_BOOSTERS or not fields["features"]:
        raise ValueError(f"it needs 1 to {MAX_BOOSTERS} boosters and at least one feature")
    if not all(isinstance(fields[k], bool) for k in ("lesion_features", "uses_image_score")):
        raise ValueError("'lesion_features' and 'uses_image_score' must be true or false")
    ok = {
        "temperature": M.finite_number(fields["temperature"]) and fields["temperature"] > 0,
        "bias": M.finite_number(fields["bias"]),
        "threshold": M.finite_number(fields["threshold"]) and 0 <= fields["threshold"] <= 1,
    }
    bad = [k for k, good in ok.items() if not good]
    if bad:
        raise ValueError(f"{bad[0]} = {repr(fields[bad[0]])[:40]} is not valid (see docs/serving.md)")
    if not isinstance(fields["info"], (dict, type(None))):
        raise ValueError("'info' must be an object")
    json.dumps(fields["info"], ensure_ascii=False).encode()  # text that cannot be echoed as UTF-8
    return fields
