"""Labelled images: the label table (any ISIC format, src/data/metadata.py) joined to the image files,
with a prepared cache preferred where it exists, and a clear message for whatever is missing.

`load_labeled_images` is what training and evaluation call; `python src/data/check.py` reports on
the same table before training.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from src.data.images import (  # DataError is raised here and re-exported for the commands
    DataError,
    ImageDecodeError,
    decode_image,
    hdf5_member,
    index_images,
    jpeg_is_truncated,
    read_image_bytes,
)
from src.data.metadata import Metadata, MetadataError, read_metadata

DEFAULT_METADATA = "data/metadata.csv"
DEFAULT_IMAGES = "data/isic"
CACHE_INFO = "prepare.json"  # written by prepare.py into its output folder
NO_DATA_HELP = """\
No ISIC data found (looked for {metadata} and {images}/).
Get the ISIC 2020 training data (33,126 dermoscopy images, CC-BY-NC) with either:
  pip install isic-cli && isic image download --collections 70 data/isic/
      (writes data/isic/*.jpg and data/isic/metadata.csv)
  or the Kaggle "SIIM-ISIC Melanoma Classification" files: jpeg/train/*.jpg -> data/isic/,
      train.csv -> data/metadata.csv
Check it with:      python src/data/check.py
Or try the pipeline on synthetic data first:  python src/training/train.py --demo"""


@dataclass
class LabeledImages:
    table: pd.DataFrame  # metadata COLUMNS + "path"
    metadata: Metadata
    metadata_paths: list[Path]
    missing: list[str] = field(default_factory=list)
    cache_dir: str | None = None  # the prepared cache in use, if any
    from_cache: int = 0  # rows read from that cache; the rest come from the originals


def find_metadata(metadata_csv: str, images_dir: str) -> list[Path]:
    """The label file(s): comma-separated paths, else metadata.csv inside the image folder."""
    paths = [Path(p.strip()) for p in str(metadata_csv).split(",") if p.strip()]
    if paths and all(p.is_file() for p in paths):
        return paths
    inside = Path(images_dir) / "metadata.csv"  # where `isic image download data/isic/` puts it
    if inside.is_file() and (not paths or paths == [Path(DEFAULT_METADATA)]):
        return [inside]
    absent = [str(p) for p in paths if not p.is_file()]
    if not Path(images_dir).is_dir() and (not paths or paths == [Path(DEFAULT_METADATA)]):
        raise DataError(NO_DATA_HELP.format(metadata=metadata_csv, images=images_dir))
    raise DataError(
        f"Metadata file not found: {', '.join(absent) or metadata_csv} (also looked for {inside})."
    )


def image_index(images_dir: str, cache_dir: str | None, img_size: int | None) -> tuple[dict, str | None, set]:
    """id -> path over every image folder (comma-separated), with prepared-cache files taking
    priority; also the cache in use and the ids found in it."""
    found: dict[str, str] = {}
    for folder in [d.strip() for d in str(images_dir).split(",") if d.strip()]:
        for key, path in index_images(folder).items():
            found.setdefault(key, path)
    cache = usable_cache(cache_dir, img_size)
    cached = index_images(cache) if cache else {}
    found.update(cached)
    return found, cache, set(cached)


def usable_cache(cache_dir: str | None, img_size: int | None) -> str | None:
    """A prepared cache is used only when its short side is at least what the model needs."""
    info = Path(cache_dir or "") / CACHE_INFO
    if not cache_dir or not info.is_file():
        return None
    size = json.loads(info.read_text()).get("size", 0)
    if img_size and size < img_size:
        print(
            f"warning: cache {cache_dir} holds {size} px images, smaller than IMG_SIZE={img_size}; "
            f"reading the originals instead",
            file=sys.stderr,
        )
        return None
    return str(cache_dir)


def load_labeled_images(
    metadata_csv: str = DEFAULT_METADATA,
    images_dir: str = DEFAULT_IMAGES,
    img_size: int | None = None,
    cache_dir: str | None = None,
    duplicates_csv: str | None = None,
    malignant_non_melanoma: str = "negative",
    skip_missing: bool = False,
    require_labels: bool = True,
) -> LabeledImages:
    """Read labels, find every image, and fail clearly (or skip, if asked) on missing ones."""
    paths = find_metadata(metadata_csv, images_dir)
    try:
        metadata = read_metadata(paths, malignant_non_melanoma, duplicates_csv or None, require_labels)
    except MetadataError as e:
        raise DataError(str(e)) from None
    index, cache, cached = image_index(images_dir, cache_dir, img_size)
    table = metadata.table.copy()
    table["path"] = table["image_name"].map(index)
    missing = table.loc[table["path"].isna(), "image_name"].tolist()
    if missing and not skip_missing:
        raise DataError(
            missing_message(missing, len(table), images_dir)
            + "\nFix the folder, or skip them: train.py --SKIP_MISSING=True "
            "(evaluate.py and check.py: --skip-missing)."
        )
    if missing:
        print(f"warning: {missing_message(missing, len(table), images_dir)}; skipping them", file=sys.stderr)
        table = table[table["path"].notna()].reset_index(drop=True)
    if table.empty:
        raise DataError(f"No images left to use from {', '.join(map(str, paths))}.")
    return LabeledImages(table, metadata, paths, missing, cache, int(table["image_name"].isin(cached).sum()))


def missing_message(missing: list[str], total: int, images_dir: str) -> str:
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return f"{len(missing)} of {total} images listed are missing from {images_dir}/ ({shown})"


def quick_check(path: str) -> str | None:
    """Cheap per-file check without decoding pixels: the reason a file is unusable, or None."""
    if hdf5_member(path):  # small JPEGs inside one file: read whole
        try:
            data = read_image_bytes(path)
        except ImageDecodeError as e:
            return str(e).split(": ", 1)[-1]
        size, head, tail = len(data), data[:8], data[-4096:]
    else:
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                f.seek(max(0, size - 4096))
                tail = f.read()
        except OSError as e:
            return f"cannot read: {e.strerror}"
    if size == 0:
        return "empty file (0 bytes)"
    if head[:2] == b"\xff\xd8":
        return None if b"\xff\xd9" in tail else _full_truncation_check(path)
    if head == b"\x89PNG\r\n\x1a\n":
        return None
    return "not a JPEG or PNG file"


def _full_truncation_check(path: str) -> str | None:
    return "truncated JPEG (no end-of-image marker)" if jpeg_is_truncated(read_image_bytes(path)) else None


def find_unreadable(paths, decode: bool = False) -> dict[str, str]:
    """path -> reason for each unusable file; `decode=True` fully decodes every image (slow, thorough)."""
    bad = {}
    for path in tqdm(
        list(paths),
        desc="decoding" if decode else "checking files",
        unit="img",
        disable=len(paths) < 2000 and not decode,
        leave=False,
    ):
        reason = quick_check(path)
        if reason is None and decode:
            try:
                decode_image(path, min_short_side=64)
            except ImageDecodeError as e:
                reason = str(e).split(": ", 1)[-1]
        if reason:
            bad[path] = reason
    return bad
