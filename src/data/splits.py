"""Patient-grouped, stratified splits, and the split file written next to the checkpoints.

ISIC 2020 has ~16 images per patient; an image-level split puts the same patient's moles on both
sides and inflates every validation number. Every split here keeps a patient (else a lesion, else
an image: see metadata.split_groups) on one side only, and keeps the melanoma rate of each fold
close to the whole set's (scikit-learn's StratifiedGroupKFold).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.atomic import atomic_write_text
from src.data.metadata import group_kinds, split_groups
from src.errors import ProjectError

# `group` is what the split keeps on one side: a patient id where the labels have one, else a
# lesion ("lesion:..."), else the image itself ("image:..."); `group_kind` says which.
# `merged_groups` counts the groups that near-duplicate merging joined into this row's (1: none).
SPLIT_COLUMNS = ["image_name", "group", "group_kind", "merged_groups", "target", "fold", "split"]


class SplitError(ProjectError, ValueError):
    pass


def assign_folds(
    table: pd.DataFrame, n_folds: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Fold index (0..n_folds-1) of every row; deterministic for a seed."""
    if n_folds < 2:
        raise SplitError(f"need at least 2 folds, got {n_folds}")
    groups = split_groups(table) if groups is None else groups
    targets = table["target"].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise SplitError(
            f"only {n_groups} split groups (patients, else lesions, else images) for {n_folds} folds; "
            "use fewer folds or more data"
        )
    folds = np.empty(len(table), dtype=np.int64)
    # Stratification needs each class in every fold; with fewer positives than folds, group-only it is.
    stratify = np.bincount(targets, minlength=2).min() >= n_folds
    from sklearn.model_selection import StratifiedGroupKFold  # here: importing sklearn costs a second or more

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    labels = targets if stratify else np.zeros_like(targets)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(table)), labels, groups)):
        folds[val_idx] = fold
    return folds


def folds_for_fraction(val_fraction: float) -> int:
    """A hold-out of 0.2 is fold 0 of 5 folds; the fraction is rounded to the nearest 1/k."""
    if not 0.0 < val_fraction < 1.0:
        raise SplitError(f"VAL_FRACTION must be between 0 and 1, got {val_fraction}")
    return max(2, round(1.0 / val_fraction))


def make_split(
    table: pd.DataFrame, val_fraction: float, fold: int, seed: int, n_folds: int = 0, near_pairs=None
) -> pd.DataFrame:
    """The split table (SPLIT_COLUMNS): hold-out by fraction, or fold `fold` of `n_folds` when n_folds>0.
    `near_pairs` (rows i, j of near-identical images, src/data/dedup.py) puts both images' groups
    into one, so that no copy of an image sits on the other side of the split."""
    n = n_folds or folds_for_fraction(val_fraction)
    if not 0 <= fold < n:
        raise SplitError(f"FOLD must be in 0..{n - 1}, got {fold}")
    groups, merged = merge_groups(split_groups(table), near_pairs)
    folds = assign_folds(table, n, seed, groups)
    return pd.DataFrame(
        {
            "image_name": table["image_name"].to_numpy(),
            "group": groups,
            "group_kind": group_kinds(table),
            "merged_groups": merged,
            "target": table["target"].to_numpy(),
            "fold": folds,
            "split": np.where(folds == fold, "val", "train"),
        }
    )


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n items joined by the links (i, j): a chain of copies is one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def merge_groups(groups: np.ndarray, near_pairs) -> tuple[np.ndarray, np.ndarray]:
    """(groups with near-duplicate-linked groups joined under their first name, how many original
    groups each row's group now holds: 1 where nothing was merged)."""
    if near_pairs is None or len(near_pairs) == 0:
        return groups, np.ones(len(groups), np.int64)
    names, index = np.unique(groups, return_inverse=True)
    component = components(len(names), index[near_pairs["i"].to_numpy()], index[near_pairs["j"].to_numpy()])
    first = pd.Series(names).groupby(component).transform("min").to_numpy()  # names are sorted
    size = np.bincount(component)
    return first[index], size[component[index]]


def merge_summary(split: pd.DataFrame) -> str:
    """What near-duplicate merging did, for the training log: '' when nothing was merged."""
    merged = split.loc[split["merged_groups"] > 1].drop_duplicates("group")
    if merged.empty:
        return ""
    return (
        f"; near-duplicates joined {int(merged['merged_groups'].sum()):,} groups into {len(merged):,} "
        f"({int((split['merged_groups'] > 1).sum()):,} images)"
    )


def check_no_leak(split: pd.DataFrame) -> int:
    """Number of groups (patients, lesions or images) present in both train and val (must be 0)."""
    train = set(split.loc[split["split"] == "train", "group"])
    val = set(split.loc[split["split"] == "val", "group"])
    return len(train & val)


def write_split(split: pd.DataFrame, path: str | Path) -> None:
    atomic_write_text(path, split[SPLIT_COLUMNS].to_csv(index=False))


def split_digest(path: str | Path) -> str:
    """SHA-256 of a split file: a checkpoint records it, so that evaluation can tell its own split
    from one that another run wrote into the same folder."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_split(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path}")
    split = pd.read_csv(
        path,
        dtype={"image_name": str, "group": str, "patient_id": str, "group_kind": str},
        keep_default_na=False,
    )
    if "group" not in split.columns and "patient_id" in split.columns:  # written before the rename
        split = split.rename(columns={"patient_id": "group"})
        split.insert(
            2,
            "group_kind",
            np.where(
                split["group"].str.startswith("lesion:"),
                "lesion",
                np.where(split["group"].str.startswith("image:"), "image", "patient"),
            ),
        )
    if "merged_groups" not in split.columns:  # written before near-duplicate merging existed
        split.insert(3, "merged_groups", 1)
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise SplitError(f"{path} is not a split file (missing columns {missing})")
    return split


def split_summary(split: pd.DataFrame) -> dict:
    out = {}
    for name, part in split.groupby("split"):
        out[name] = {
            "images": int(len(part)),
            "melanoma": int(part["target"].sum()),
            "groups": int(part["group"].nunique()),
            "melanoma_rate": round(float(part["target"].mean()), 5),
        }
    out["groups_in_both"] = check_no_leak(split)
    out["group_kinds"] = sorted(set(split["group_kind"]))
    return out


def grouping_description(split: pd.DataFrame) -> str:
    """What the split kept together, said plainly: "patient" only where the labels have patient ids."""
    kinds = set(split["group_kind"])
    if kinds == {"patient"}:
        return "no patient in both"
    if kinds != {"image"}:
        return "grouped by patient where known, else lesion, else image (labels lack some patient ids)"
    return (
        "grouped by image only: these labels have no patient or lesion ids, "
        "so one patient may be on both sides"
    )
