"""Read every ISIC label format into one common table.

Formats are detected from the columns, never from the file name:

- ``isic2020``: ISIC 2020 ground truth v1/v2 and Kaggle ``train.csv``
  (``image_name, patient_id, ..., target``). Also any CSV with ``image_name`` and ``target``.
- ``isic2020_unlabeled``: Kaggle ``test.csv`` (``image_name`` without ``target``); prediction only.
- ``isic2024``: ISIC 2024 (SLICE-3D) ``train-metadata.csv`` (``isic_id, target, patient_id, ...,
  tbp_lv_*, iddx_*``); its ``target`` means "any malignant", melanoma is read from ``iddx_2``/``iddx_3``.
  ``isic2024_unlabeled``: its ``test-metadata.csv`` (no ``target``); prediction only.
  The numeric measurements (``clin_size_long_diam_mm``, ``tbp_lv_*``) are kept for the context stage.
- ``isic_archive``: the ISIC Archive / ``isic-cli`` ``metadata.csv`` (``isic_id, attribution, ...``),
  current (``diagnosis_1..5``) and older (``benign_malignant``, ``diagnosis``) exports.
- ``isic2019``: ISIC 2019 ground truth (one-hot ``MEL, NV, ...``), merged with the
  ``ISIC_2019_Training_Metadata.csv`` beside it when present.
- ``isic2017``: ISIC 2017 Part 3 ground truth (``image_id, melanoma, seborrheic_keratosis``).
- ``ham10000``: ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, ...``).

The common table has one row per image with COLUMNS below; ``target`` is 1 for melanoma, 0 otherwise
(malignant lesions that are not melanoma follow MALIGNANT_POLICIES).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import ProjectError

COLUMNS = [
    "image_name",
    "target",
    "patient_id",
    "lesion_id",
    "sex",
    "age_approx",
    "anatom_site",
    "diagnosis",
    "source",
]
# Columns only some formats have: the newer ISIC Archive metadata's Fitzpatrick skin type (I-VI),
# reported as an evaluation subgroup.
OPTIONAL_COLUMNS = ["skin_type"]
# ISIC 2024 measurements from the 3D total-body photograph, kept (as numbers) for the context stage.
# Only columns present in the official test-metadata.csv: what prediction will have too.
NON_MEASUREMENTS = {"tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_dnn_lesion_confidence"}


def measurement_columns(columns) -> list[str]:
    return [
        c
        for c in columns
        if (c.startswith("tbp_lv_") and c not in NON_MEASUREMENTS) or c == "clin_size_long_diam_mm"
    ]


# What a malignant lesion that is not melanoma (BCC, SCC, ...) becomes. The ISIC 2020 target
# is "melanoma or not", so the default is 0; "positive" makes it 1, "drop" removes those rows.
MALIGNANT_POLICIES = ("negative", "positive", "drop")
KNOWN_FORMATS = {
    "isic2024": "ISIC 2024 train-metadata.csv: isic_id, target, patient_id, ..., tbp_lv_*, iddx_1..5",
    "isic2024_unlabeled": "ISIC 2024 test-metadata.csv: isic_id, patient_id, ..., tbp_lv_* (no target)",
    "isic2020": "ISIC 2020 ground truth / Kaggle train.csv: image_name, patient_id, ..., target",
    "isic2020_unlabeled": "Kaggle test.csv: image_name, patient_id, ... (no target; prediction only)",
    "isic_archive": "ISIC Archive / isic-cli metadata.csv: isic_id, attribution, copyright_license, "
    "diagnosis_1..5 (or benign_malignant, diagnosis)",
    "isic2019": "ISIC 2019 ground truth: image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK",
    "isic2017": "ISIC 2017 Part 3 ground truth: image_id, melanoma, seborrheic_keratosis",
    "ham10000": "HAM10000_metadata.csv: lesion_id, image_id, dx, dx_type, age, sex, localization",
}
MELANOMA_DIAGNOSIS_2 = "Malignant melanocytic proliferations (Melanoma)"
# An age is a finite number of years in this range on every path (CSV, form field, JSON): anything
# else (-1, 1e6, inf, text) is not an age. A CSV cell reads as missing; the service answers 422.
AGE_RANGE = (0.0, 120.0)


class MetadataError(ProjectError, ValueError):
    """Bad or unreadable label file; the message is meant for the user as it is."""


@dataclass
class Metadata:
    table: pd.DataFrame  # COLUMNS, one row per image
    formats: list[str]  # detected format of each file read
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows removed
    other_malignant: int = 0  # malignant rows that are not melanoma (BCC, SCC...), before the policy
    invalid_ages: int = 0  # rows whose age is not a number of years in AGE_RANGE (read as missing)


def detect_format(columns) -> str | None:
    cols = set(columns)
    if {"isic_id", "tbp_tile_type"} <= cols:
        return "isic2024" if "target" in cols else "isic2024_unlabeled"
    if "isic_id" in cols:
        return "isic_archive"
    if {"image", "MEL"} <= cols:
        return "isic2019"
    if {"image_id", "melanoma"} <= cols:
        return "isic2017"
    if {"image_id", "dx"} <= cols:
        return "ham10000"
    if "image_name" in cols:
        return "isic2020" if "target" in cols else "isic2020_unlabeled"
    return None


# The text columns each large format's parser reads (the others are never loaded: an ISIC 2024
# train-metadata.csv has 55 columns, of which these and the measurements are used).
TEXT_COLUMNS_READ = {
    "isic2024": ["isic_id", "target", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general"]
    + ["iddx_1", "iddx_2", "iddx_3"],
    "isic_archive": ["isic_id", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general"]
    + ["diagnosis_1", "diagnosis_2", "diagnosis_3", "benign_malignant", "diagnosis", "fitzpatrick_skin_type"],
}
TEXT_COLUMNS_READ["isic2024_unlabeled"] = TEXT_COLUMNS_READ["isic2024"]


def read_csv(path: str | Path, columns=None, numbers=()) -> pd.DataFrame:
    """The CSV as text (ids like "ISIC_0000000" and empty cells survive as they are), or only
    `columns` of it, with `numbers` read as float64 (a cell that is not a number reads as NaN)."""
    text = {"dtype": str, "keep_default_na": False}
    if not numbers:
        return _read(path, usecols=columns, **text)
    try:  # numbers parsed by the CSV reader: no text copy of ~35 columns of 400k+ rows
        dtypes = {c: (np.float64 if c in numbers else str) for c in columns}
        missing = {c: ["", "nan", "NaN", "NA"] for c in numbers}
        return _read(path, usecols=columns, dtype=dtypes, keep_default_na=False, na_values=missing)
    except ValueError as e:  # a cell that is not a number: read as text, then coerced
        if isinstance(e, MetadataError):  # not a CSV at all: reading it again would not help
            raise
        raw = _read(path, usecols=columns, **text)
        return raw.assign(**{c: pd.to_numeric(raw[c], errors="coerce") for c in numbers})


def read_header(path: str | Path) -> list[str]:
    return list(_read(path, nrows=0, dtype=str).columns)


def _read(path: str | Path, **options) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"Metadata file not found: {path}")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **options)
    except pd.errors.EmptyDataError:
        raise MetadataError(f"Metadata file is empty: {path}") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise MetadataError(f"Metadata file is not a readable CSV: {path} ({type(e).__name__})") from None


def read_metadata(
    paths, malignant_non_melanoma: str = "negative", duplicates_csv=None, require_labels: bool = True
) -> Metadata:
    """Read one or several label files into the common table (first file wins on repeated ids)."""
    if malignant_non_melanoma not in MALIGNANT_POLICIES:
        raise MetadataError(
            f"malignant_non_melanoma must be one of {MALIGNANT_POLICIES}, not {malignant_non_melanoma!r}"
        )
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tables, formats, dropped, other, invalid_ages = [], [], {}, 0, 0
    for path in paths:
        table, fmt, file_dropped, file_other, file_invalid = _read_one(
            Path(path), malignant_non_melanoma, require_labels
        )
        other += file_other
        invalid_ages += file_invalid
        tables.append(table)
        formats.append(fmt)
        for reason, n in file_dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    table = pd.concat(tables, ignore_index=True)
    repeated = table["image_name"].duplicated()
    if repeated.any():  # e.g. ISIC 2019 already contains HAM10000 and ISIC 2017
        dropped["listed in an earlier file"] = int(repeated.sum())
        table = table[~repeated].reset_index(drop=True)
    if duplicates_csv:
        table, n = drop_official_duplicates(table, duplicates_csv)
        dropped["official duplicate"] = n
    return Metadata(table, formats, dropped, other_malignant=other, invalid_ages=invalid_ages)


def _read_one(path: Path, policy: str, require_labels: bool):
    header = read_header(path)
    fmt = detect_format(header)
    if fmt is None:
        known = "\n".join(f"  - {name}: {desc}" for name, desc in KNOWN_FORMATS.items())
        raise MetadataError(
            f"Unknown metadata format in {path}.\nColumns found: {header}\nKnown formats:\n{known}"
        )
    if fmt.endswith("_unlabeled") and require_labels:
        raise MetadataError(
            f"{path} has no 'target' column (it looks like a Kaggle test file, which has no "
            f"labels: {KNOWN_FORMATS[fmt]}). Training and evaluation need labels."
        )
    raw = _read_used_columns(path, fmt, header)
    parse = {
        "isic2020": _parse_isic2020,
        "isic2020_unlabeled": _parse_isic2020,
        "isic2024": _parse_isic2024,
        "isic2024_unlabeled": _parse_isic2024,
        "isic_archive": _parse_archive,
        "isic2019": _parse_isic2019,
        "isic2017": _parse_isic2017,
        "ham10000": _parse_ham10000,
    }[fmt]
    table = parse(raw, path)
    table["source"] = fmt
    table["age_approx"], invalid_ages = _ages(table["age_approx"])
    other_malignant = int((table.get("_malignant", False) & (table["target"] == 0)).sum())
    table = _apply_label_rules(table, policy)
    dropped = {reason: int((table["_drop"] == reason).sum()) for reason in table["_drop"].unique() if reason}
    table = table[table["_drop"] == ""].drop(columns=["_drop", "_malignant"]).reset_index(drop=True)
    _check_unique_ids(table, path)
    kept = COLUMNS + [c for c in OPTIONAL_COLUMNS if c in table] + measurement_columns(table.columns)
    return table[kept], fmt, dropped, other_malignant, invalid_ages


def _read_used_columns(path: Path, fmt: str, header: list[str]) -> pd.DataFrame:
    """The columns the format's parser reads (every column for the small formats), measurements as
    numbers: a 401,059-row ISIC 2024 table then takes a fraction of its all-text size."""
    if fmt not in TEXT_COLUMNS_READ:
        return read_csv(path)
    numbers = measurement_columns(header) if fmt.startswith("isic2024") else []
    columns = [c for c in header if c in TEXT_COLUMNS_READ[fmt] or c in numbers]
    return read_csv(path, columns, numbers)


def _apply_label_rules(table: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Resolve malignant non-melanoma rows per the policy and mark unlabeled ones for dropping."""
    table = table.copy()
    if "_drop" not in table:
        table["_drop"] = ""
    if "_malignant" not in table:
        table["_malignant"] = False
    other_malignant = table["_malignant"] & (table["target"] == 0)
    if policy == "positive":
        table.loc[other_malignant, "target"] = 1
    elif policy == "drop":
        table.loc[other_malignant & (table["_drop"] == ""), "_drop"] = "malignant, not melanoma"
    table["target"] = table["target"].fillna(-1).astype(np.int64)
    return table


def _check_unique_ids(table: pd.DataFrame, path: Path) -> None:
    dup = table["image_name"][table["image_name"].duplicated()]
    if len(dup):
        raise MetadataError(
            f"{path}: {len(dup)} duplicate image ids, e.g. {', '.join(dup.unique()[:5])}. "
            f"Each image must be listed once."
        )
    empty = table["image_name"].str.strip() == ""
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy())[:5] + 2).tolist()
        raise MetadataError(f"{path}: {int(empty.sum())} rows have no image id (lines {rows}).")


def _column(raw: pd.DataFrame, name: str) -> pd.Series:
    return raw[name].str.strip() if name in raw.columns else pd.Series([""] * len(raw), index=raw.index)


def valid_ages(ages) -> np.ndarray:
    ages = np.asarray(ages, dtype=np.float64)
    return np.isfinite(ages) & (ages >= AGE_RANGE[0]) & (ages <= AGE_RANGE[1])


def _ages(values: pd.Series) -> tuple[pd.Series, int]:
    """Ages from a column of text: a cell that is not an age reads as missing; also how many did not."""
    cells = text(values)
    numbers = pd.to_numeric(cells, errors="coerce")
    ok = valid_ages(numbers)
    return numbers.where(ok), int(((cells != "") & ~ok).sum())


def invalid_ages_note(rows: int) -> str:
    years = f"{AGE_RANGE[0]:g}-{AGE_RANGE[1]:g}"
    return f"{rows:,} rows have an age that is not a number of years in {years}: read as missing"


def age_in_years(value) -> float | None:
    """One age from a form field or a JSON value: None when empty; ValueError saying what is wrong
    when it is not an age (a boolean, an overflowing integer and 1e6 included)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number of years")
    try:
        age = float(value)
    except (ValueError, OverflowError):
        raise ValueError("must be a number of years") from None
    if not valid_ages([age])[0]:
        raise ValueError(f"must be between {AGE_RANGE[0]:g} and {AGE_RANGE[1]:g}")
    return age


def _binary(values: pd.Series, path: Path, column: str) -> pd.Series:
    """0/1 labels, also written as 0.0/1.0; anything else is an error naming the rows."""
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = ~numbers.isin([0, 1])
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy())[:5] + 2).tolist()
        shown = sorted(set(values[bad].tolist()))[:5]
        raise MetadataError(
            f"{path}: column '{column}' must be 0 or 1, found {shown} "
            f"in {int(bad.sum())} rows (lines {rows})."
        )
    return numbers.astype(np.int64)


def _parse_isic2020(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    labeled = "target" in raw.columns
    return pd.DataFrame(
        {
            "image_name": raw["image_name"].str.strip(),
            "target": _binary(raw["target"], path, "target") if labeled else -1,
            "patient_id": _column(raw, "patient_id"),
            "lesion_id": _column(raw, "lesion_id"),
            "sex": _column(raw, "sex"),
            "age_approx": _column(raw, "age_approx"),
            "anatom_site": _column(raw, "anatom_site_general_challenge"),
            "diagnosis": _column(raw, "diagnosis"),
        }
    )


def _parse_isic2024(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    labeled = "target" in raw.columns
    malignant = _binary(raw["target"], path, "target") == 1 if labeled else pd.Series(False, index=raw.index)
    _, melanoma, diagnosis = _diagnosis_levels(raw, "iddx_")
    table = pd.DataFrame(
        {
            "image_name": raw["isic_id"].str.strip(),
            "target": (malignant & melanoma).astype(np.int64) if labeled else -1,
            "patient_id": _column(raw, "patient_id"),
            "lesion_id": _column(raw, "lesion_id"),
            "sex": _column(raw, "sex"),
            "age_approx": _column(raw, "age_approx"),
            "anatom_site": _column(raw, "anatom_site_general"),
            "diagnosis": diagnosis,
            "_malignant": malignant,
        }
    )
    for name in measurement_columns(raw.columns):
        table[name] = pd.to_numeric(raw[name], errors="coerce")
    return table


def _parse_archive(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "diagnosis_1" in raw.columns:
        target, malignant, unlabeled, diagnosis = _archive_labels_current(raw)
    elif "benign_malignant" in raw.columns or "diagnosis" in raw.columns:
        target, malignant, unlabeled, diagnosis = _archive_labels_older(raw)
    else:
        raise MetadataError(
            f"{path} looks like ISIC Archive metadata (has isic_id) but has no diagnosis "
            f"column (diagnosis_1..5, or benign_malignant/diagnosis). "
            f"Columns found: {read_header(path)}"
        )
    site = _column(raw, "anatom_site_general")
    skin = {"skin_type": _column(raw, "fitzpatrick_skin_type")} if "fitzpatrick_skin_type" in raw else {}
    return pd.DataFrame(
        {
            **skin,
            "image_name": raw["isic_id"].str.strip(),
            "target": target,
            "patient_id": _column(raw, "patient_id"),
            "lesion_id": _column(raw, "lesion_id"),
            "sex": _column(raw, "sex"),
            "age_approx": _column(raw, "age_approx"),
            "anatom_site": site,
            "diagnosis": diagnosis,
            "_malignant": malignant,
            "_drop": np.where(unlabeled, "indeterminate or unlabeled", ""),
        }
    )


def _diagnosis_levels(raw: pd.DataFrame, prefix: str):
    """The ISIC diagnosis hierarchy (diagnosis_1..3 in the Archive, iddx_1..3 in ISIC 2024): level 1,
    whether it is a melanoma, and the most specific level filled in (e.g. "Nevus", not "Benign")."""
    d1, d2, d3 = (_column(raw, f"{prefix}{i}") for i in (1, 2, 3))
    melanoma = (d2 == MELANOMA_DIAGNOSIS_2) | d3.str.startswith("Melanoma")
    return d1, melanoma, d3.where(d3 != "", d2.where(d2 != "", d1))


def _archive_labels_current(raw: pd.DataFrame):
    d1, melanoma, diagnosis = _diagnosis_levels(raw, "diagnosis_")
    malignant = d1 == "Malignant"
    unlabeled = ~(melanoma | malignant | (d1 == "Benign"))
    return melanoma.astype(np.int64), malignant, unlabeled, diagnosis


def _archive_labels_older(raw: pd.DataFrame):
    bm = _column(raw, "benign_malignant").str.lower()
    diagnosis = _column(raw, "diagnosis")
    melanoma = diagnosis.str.lower().str.startswith("melanoma")
    malignant = bm == "malignant"
    unlabeled = ~(melanoma | malignant | (bm == "benign"))
    return melanoma.astype(np.int64), malignant, unlabeled, diagnosis


ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC2019_MALIGNANT = {"BCC", "SCC", "AK"}


def _parse_isic2019(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    classes = [c for c in ISIC2019_CLASSES if c in raw.columns]
    scores = raw[classes].apply(pd.to_numeric, errors="coerce")
    if scores.isna().any().any():
        raise MetadataError(f"{path}: the class columns {classes} must hold numbers (0.0 or 1.0).")
    label = scores.idxmax(axis=1)
    extra = _isic2019_side_metadata(raw["image"], path)
    return pd.DataFrame(
        {
            "image_name": raw["image"].str.strip(),
            "target": (label == "MEL").astype(np.int64),
            "patient_id": "",
            "lesion_id": extra["lesion_id"],
            "sex": extra["sex"],
            "age_approx": extra["age_approx"],
            "anatom_site": extra["anatom_site_general"],
            "diagnosis": label,
            "_malignant": label.isin(ISIC2019_MALIGNANT),
            "_drop": np.where((label == "UNK") | (scores.max(axis=1) <= 0), "indeterminate or unlabeled", ""),
        }
    )


def _isic2019_side_metadata(images: pd.Series, path: Path) -> pd.DataFrame:
    """ISIC 2019 ships ages, sites and lesion ids in a second file beside the ground truth."""
    side = path.with_name(path.name.replace("GroundTruth", "Metadata"))
    columns = ["lesion_id", "sex", "age_approx", "anatom_site_general"]
    if side == path or not side.is_file():
        return pd.DataFrame({c: "" for c in columns}, index=images.index)
    meta = read_csv(side).set_index("image")
    meta = meta.reindex(images.str.strip())
    return pd.DataFrame(
        {c: meta[c].fillna("").to_numpy() if c in meta else "" for c in columns}, index=images.index
    )


def _parse_isic2017(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    target = _binary(raw["melanoma"], path, "melanoma")
    sk = (
        _binary(raw["seborrheic_keratosis"], path, "seborrheic_keratosis")
        if "seborrheic_keratosis" in raw.columns
        else 0
    )
    diagnosis = np.where(target == 1, "melanoma", np.where(sk == 1, "seborrheic keratosis", "nevus"))
    return pd.DataFrame(
        {
            "image_name": raw["image_id"].str.strip(),
            "target": target,
            "patient_id": "",
            "lesion_id": "",
            "sex": "",
            "age_approx": "",
            "anatom_site": "",
            "diagnosis": diagnosis,
        }
    )


HAM_MALIGNANT = {"bcc", "akiec"}


def _parse_ham10000(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    dx = raw["dx"].str.strip().str.lower()
    return pd.DataFrame(
        {
            "image_name": raw["image_id"].str.strip(),
            "target": (dx == "mel").astype(np.int64),
            "patient_id": "",
            "lesion_id": _column(raw, "lesion_id"),
            "sex": _column(raw, "sex"),
            "age_approx": _column(raw, "age"),
            "anatom_site": _column(raw, "localization"),
            "diagnosis": dx,
            "_malignant": dx.isin(HAM_MALIGNANT),
            "_drop": np.where(dx == "", "indeterminate or unlabeled", ""),
        }
    )


def drop_official_duplicates(table: pd.DataFrame, duplicates_csv) -> tuple[pd.DataFrame, int]:
    """ISIC_2020_Training_Duplicates.csv lists pairs of the same photo; keep the first of each pair."""
    pairs = read_csv(duplicates_csv)
    if not {"image_name_1", "image_name_2"} <= set(pairs.columns):
        raise MetadataError(
            f"{duplicates_csv}: a duplicates list needs columns image_name_1, image_name_2; "
            f"found {list(pairs.columns)}"
        )
    second = set(pairs["image_name_2"].str.strip())
    drop = table["image_name"].isin(second)
    return table[~drop].reset_index(drop=True), int(drop.sum())


def text(values: pd.Series) -> pd.Series:
    """Stripped strings with a missing value as "": the same under pandas 2 and 3 (where
    astype(str) keeps NaN as a float, which then breaks sorting and comparison with strings)."""
    return values.astype(object).where(values.notna(), "").astype(str).str.strip()


def split_groups(table: pd.DataFrame) -> np.ndarray:
    """The unit that must not cross splits: the patient, else the lesion, else the image itself."""
    patient, lesion = text(table["patient_id"]), text(table["lesion_id"])
    image = "image:" + text(table["image_name"])
    groups = np.where(patient != "", patient, np.where(lesion != "", "lesion:" + lesion, image))
    return groups.astype(str)


def group_kinds(table: pd.DataFrame) -> np.ndarray:
    """What each row's split group is: "patient", "lesion" or "image" (see split_groups)."""
    patient, lesion = text(table["patient_id"]), text(table["lesion_id"])
    return np.where(patient != "", "patient", np.where(lesion != "", "lesion", "image"))


# Diagnosis codes of ISIC 2019 and HAM10000, as the names the other formats use (TARGET="diagnosis").
DIAGNOSIS_NAMES = {
    "mel": "melanoma",
    "nv": "nevus",
    "bcc": "basal cell carcinoma",
    "ak": "actinic keratosis",
    "akiec": "actinic keratosis",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular lesion",
    "scc": "squamous cell carcinoma",
    "unk": "unknown",
    "": "unknown",
}


def diagnosis_names(table: pd.DataFrame) -> pd.Series:
    """Each row's diagnosis, one name per kind across formats: "melanoma" wherever the target says
    so (the label every metric uses), else the diagnosis column, codes written out, "unknown" when
    empty (ISIC 2020 has 27,124 benign lesions of unknown diagnosis)."""
    names = text(table["diagnosis"]).str.strip().str.lower()
    names = names.map(lambda n: DIAGNOSIS_NAMES.get(n, n))
    return names.where(table["target"].to_numpy() != 1, "melanoma")


def diagnosis_classes(table: pd.DataFrame) -> tuple[str, ...]:
    """The diagnosis target's classes: melanoma first, then the others by how often they occur."""
    counts = diagnosis_names(table).value_counts()
    return ("melanoma", *[n for n in counts.index if n != "melanoma"])
