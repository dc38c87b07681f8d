"""The images of the run that wrote a checkpoint (its training or validation part), rebuilt from the
settings and split file the run recorded: never retyped, and refused when the split has changed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.data.labels import load_labeled_images
from src.data.splits import read_split, split_digest
from src.errors import ProjectError

# The training settings that say where the run's data came from; read from the checkpoint, never retyped.
DATA_SETTINGS = ("METADATA_CSV", "DATA_DIR", "CACHE_DIR", "DUPLICATES_CSV", "MALIGNANT_NON_MELANOMA")


class RunDataError(ProjectError):
    """The run's images cannot be rebuilt as they were."""


def run_images(ckpt: dict, ckpt_path: Path, part: str) -> tuple[pd.DataFrame, Path]:
    """The `part` ("train" or "val") images of the run that wrote the checkpoint, read with that run's
    settings, and the split file they come from."""
    c = ckpt.get("config", {})
    split_path = ckpt_path.parent / ckpt.get("split_file", "split.csv")
    split = read_split(split_path)
    if ckpt.get("split_sha256") and split_digest(split_path) != ckpt["split_sha256"]:
        raise RunDataError(
            f"{split_path} is not the split this model was trained with (its SHA-256 differs "
            f"from the one in {ckpt_path.name}; was another run written to this folder?). "
            f"Its 'validation' images may be training images of this model: refusing to "
            f"evaluate on them. Pass an independent set with --metadata/--images."
        )
    missing = [k for k in DATA_SETTINGS if k not in c]
    if missing:
        raise RunDataError(
            f"{ckpt_path} does not record the training setting(s) {missing}, so its validation "
            f"set cannot be rebuilt; evaluate a labelled set with --metadata/--images instead"
        )
    data = load_labeled_images(
        c["METADATA_CSV"],
        c["DATA_DIR"],
        ckpt["img_size"],
        c["CACHE_DIR"] or None,
        c["DUPLICATES_CSV"] or None,
        c["MALIGNANT_NON_MELANOMA"],
        skip_missing=True,
    )
    names = split.loc[split["split"] == part, "image_name"]
    table = data.table.set_index("image_name")
    absent = [n for n in names if n not in table.index]
    if absent:
        raise RunDataError(
            f"{len(absent)} {part} images of {split_path} are not in the data "
            f"({', '.join(absent[:5])}); was the data moved? Pass --metadata/--images."
        )
    return table.loc[names].reset_index(), split_path


def own_validation_set(ckpt: dict, ckpt_path: Path) -> tuple[pd.DataFrame, str]:
    """The validation images of the run that wrote the checkpoint, read with that run's settings."""
    table, split_path = run_images(ckpt, ckpt_path, "val")
    return table, f"the run's validation split ({split_path})"
