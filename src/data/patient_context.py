"""Features that describe a lesion the way a dermatologist sees it: with the patient's other lesions.

`context_features(table)` turns the common metadata table (src/data/metadata.py, one row per image)
into numbers for the context stage (src/training/context.py). It never reads `target`: the caller
passes the table without it, and tests check that shuffling the labels changes nothing.

- metadata: age, sex, site; for ISIC 2024 also the lesion measurements (size, colour, shape: tbp_lv_*);
- patient context: how many images and lesions the patient has, where this image sits in the patient's
  timeline (age relative to the first and last image; a "visit" is one age_approx value, the only date
  ISIC publishes), how many images were taken at the same visit and on the same site;
- follow-up: images of the same lesion, when every row has a lesion id (in ISIC 2024 only biopsied
  lesions have one, so a partial lesion_id column is itself a label signal and is not used);
- "ugly duckling": each numeric feature, and the image model's score when given, relative to the same
  patient's lesions (difference from the patient mean, z-score, rank).

Patient-relative values depend on which of the patient's lesions are scored together: score all of a
patient's lesions in one call (predict.py and POST /triage do).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.data.metadata import measurement_columns, split_groups, text

SEXES = ("female", "male")


def has_lesion_ids(table: pd.DataFrame) -> bool:
    return bool(len(table)) and bool((text(table["lesion_id"]) != "").all())


def context_features(
    table: pd.DataFrame,
    sites: list[str],
    image_logit=None,
    lesion_features: bool = True,
    measurements: list[str] | None = None,
) -> pd.DataFrame:
    """One row of numbers per image (NaN where unknown). `sites` fixes the site codes (stored with the
    model); `measurements` the numeric columns (default: those the table has)."""
    if "target" in table.columns:
        raise ValueError("context_features must not see the labels: drop 'target' first")
    t = table.reset_index(drop=True)
    f = pd.DataFrame(index=t.index)
    patient = pd.Series(split_groups(t), index=t.index)
    age = pd.to_numeric(t["age_approx"], errors="coerce")
    site = text(t["anatom_site"]).str.lower()
    f["age"] = age
    f["sex"] = text(t["sex"]).str.lower().map({s: i for i, s in enumerate(SEXES)}).astype(float)
    f["site"] = site.map({s: i for i, s in enumerate(sites)}).astype(float)
    f = pd.concat([f, timeline(patient, age, site)], axis=1)
    if lesion_features:
        f = pd.concat([f, follow_up(t, patient)], axis=1)
    columns = measurement_columns(t.columns) if measurements is None else measurements
    numeric = {c: pd.to_numeric(t[c], errors="coerce") if c in t else np.nan for c in columns}
    if image_logit is not None:
        numeric["image_logit"] = pd.Series(np.asarray(image_logit, dtype=float), index=t.index)
    for name, values in numeric.items():
        f = pd.concat(
            [f, relative_to_patient(name, pd.Series(values, index=t.index, dtype=float), patient)], axis=1
        )
    return f


def timeline(patient: pd.Series, age: pd.Series, site: pd.Series) -> pd.DataFrame:
    """Where the image sits among the patient's images: counts, visits (ages) and sites."""
    g = age.groupby(patient)
    visit = age.fillna(-1)
    size = patient.groupby(patient).transform("size").astype(float)
    visit_n = patient.groupby([patient, visit]).transform("size").astype(float)
    visits = g.transform("nunique").astype(float)
    f = pd.DataFrame(
        {
            "patient_images": size,
            "age_from_first": age - g.transform("min"),
            "age_to_last": g.transform("max") - age,
            "patient_age_span": g.transform("max") - g.transform("min"),
            "age_z": (age - g.transform("mean")) / (g.transform("std").fillna(0) + 1),
            "age_rank": g.rank(pct=True),
            "visits": visits,
            "visit_index": g.rank(method="dense"),
            "visit_images": visit_n,
            "visit_share": visit_n / size,
            "visit_images_vs_mean": visit_n / (size / visits.clip(lower=1)),
            "visit_sites": site.groupby([patient, visit]).transform("nunique").astype(float),
            "visit_site_images": patient.groupby([patient, visit, site]).transform("size").astype(float),
            "site_images": patient.groupby([patient, site]).transform("size").astype(float),
        }
    )
    f["visits_after"] = f["visits"] - f["visit_index"]
    f["visit_n_z"] = _z(f["visit_images"], patient)
    f["visit_site_share"] = f["visit_site_images"] / f["visit_images"]
    f["site_share"] = f["site_images"] / size
    return f


def follow_up(t: pd.DataFrame, patient: pd.Series) -> pd.DataFrame:
    lesion = patient + "/" + text(t["lesion_id"])
    return pd.DataFrame(
        {
            "lesion_images": lesion.groupby(lesion).transform("size").astype(float),
            "patient_lesions": lesion.groupby(patient).transform("nunique").astype(float),
        }
    )


def relative_to_patient(name: str, values: pd.Series, patient: pd.Series) -> pd.DataFrame:
    """The value itself and against the patient's other lesions: minus the mean, z-score, rank."""
    mean = values.groupby(patient).transform("mean")
    return pd.DataFrame(
        {
            name: values,
            f"{name}_minus_patient": values - mean,
            f"{name}_patient_z": _z(values, patient),
            f"{name}_patient_rank": values.groupby(patient).rank(pct=True),
        }
    )


def _z(values: pd.Series, patient: pd.Series) -> pd.Series:
    g = values.groupby(patient)
    std = g.transform("std").fillna(0)
    return (values - g.transform("mean")) / std.where(std > 0, 1)


def ugly_duckling_rank(scores, patient) -> np.ndarray:
    """Rank of each lesion's score within its patient: 1 = the one that stands out most."""
    return (
        pd.Series(np.asarray(scores, dtype=float))
        .groupby(np.asarray(patient))
        .rank(ascending=False, method="min")
        .to_numpy()
    )
