"""Data layer entry: labels + image files -> a checked table, and a check command to run before training.

    python src/data/loader.py                                   # data/metadata.csv + data/isic/
    python src/data/loader.py --metadata CSV --images DIR [--json] [--decode]

Prints the detected format, rows, melanomas, patients, missing and unreadable files, and the
patient-grouped split with its leak check; exits 1 with a clear message on bad data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script: make `src` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd
from tqdm import tqdm

from src.data.images import ImageDecodeError, decode_image, index_images, jpeg_is_truncated
from src.data.metadata import Metadata, MetadataError, read_metadata
from src.data.splits import SplitError, make_split, split_summary

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
Check it with:      python src/data/loader.py
Or try the pipeline on synthetic data first:  python src/training/train.py --demo"""


class DataError(Exception):
    """Any data problem worth a one-paragraph message and exit code 1."""


@dataclass
class LabeledImages:
    table: pd.DataFrame                  # metadata COLUMNS + "path"
    metadata: Metadata
    metadata_paths: list[Path]
    missing: list[str] = field(default_factory=list)
    cache_dir: str | None = None         # the prepared cache in use, if any
    from_cache: int = 0                  # rows read from that cache; the rest come from the originals


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
    raise DataError(f"Metadata file not found: {', '.join(absent) or metadata_csv} "
                    f"(also looked for {inside}).")


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
        print(f"warning: cache {cache_dir} holds {size} px images, smaller than IMG_SIZE={img_size}; "
              f"reading the originals instead", file=sys.stderr)
        return None
    return str(cache_dir)


def load_labeled_images(metadata_csv: str = DEFAULT_METADATA, images_dir: str = DEFAULT_IMAGES,
                        img_size: int | None = None, cache_dir: str | None = None,
                        duplicates_csv: str | None = None, malignant_non_melanoma: str = "negative",
                        skip_missing: bool = False, require_labels: bool = True) -> LabeledImages:
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
        raise DataError(missing_message(missing, len(table), images_dir) +
                        "\nFix the folder, or skip them: train.py --SKIP_MISSING=True "
                        "(loader.py --skip-missing).")
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
    with open(path, "rb") as f:
        return "truncated JPEG (no end-of-image marker)" if jpeg_is_truncated(f.read()) else None


def find_unreadable(paths, decode: bool = False) -> dict[str, str]:
    """path -> reason for each unusable file; `decode=True` fully decodes every image (slow, thorough)."""
    bad = {}
    for path in tqdm(list(paths), desc="decoding" if decode else "checking files", unit="img",
                     disable=len(paths) < 2000 and not decode, leave=False):
        reason = quick_check(path)
        if reason is None and decode:
            try:
                decode_image(path, min_short_side=64)
            except ImageDecodeError as e:
                reason = str(e).split(": ", 1)[-1]
        if reason:
            bad[path] = reason
    return bad


def dataset_report(data: LabeledImages, val_fraction: float, fold: int, seed: int,
                   decode: bool = False) -> dict:
    table = data.table
    unreadable = find_unreadable(table["path"], decode)
    split = make_split(table, val_fraction, fold, seed)
    return {
        "metadata": [str(p) for p in data.metadata_paths], "formats": data.metadata.formats,
        "rows": int(len(table)), "melanoma": int(table["target"].sum()),
        "melanoma_rate": round(float(table["target"].mean()), 5),
        "patients": int(table.loc[table["patient_id"] != "", "patient_id"].nunique()),
        "split_groups": int(split["patient_id"].nunique()),
        "dropped": data.metadata.dropped, "missing_images": len(data.missing),
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable.items()],
        "cache": data.cache_dir, "from_cache": data.from_cache, "split": split_summary(split),
    }


def print_report(report: dict) -> None:
    print(f"metadata:      {', '.join(report['metadata'])} (format: {', '.join(report['formats'])})")
    patients = f"{report['patients']:,}" if report["patients"] else \
        f"none listed (split by lesion, else image: {report['split_groups']:,} groups)"
    print(f"images:        {report['rows']:,}   melanoma: {report['melanoma']:,} "
          f"({100 * report['melanoma_rate']:.2f}%)   patients: {patients}")
    for reason, n in report["dropped"].items():
        print(f"dropped:       {n:,} rows ({reason})")
    print(f"missing files: {report['missing_images']}   unreadable files: {len(report['unreadable'])}")
    for item in report["unreadable"][:10]:
        print(f"  {item['path']}: {item['reason']}")
    if report["cache"]:
        print(f"cache:         {report['cache']} ({report['from_cache']:,} of {report['rows']:,} images; "
              f"the rest are read from the originals)")
    unit = "patients" if report["patients"] else "groups"
    for name in ("train", "val"):
        s = report["split"].get(name, {})
        print(f"{name + ':':<15}{s.get('images', 0):,} images, {s.get('melanoma', 0):,} melanoma "
              f"({100 * s.get('melanoma_rate', 0):.2f}%), {s.get('patients', 0):,} {unit}")
    leak = report["split"]["patients_in_both"]
    if leak:
        print(f"leak check:    {leak} patients in both splits!")
    elif report["patients"]:
        print("leak check:    OK, no patient in both splits")
    else:
        print("leak check:    no group in both splits, but these labels have no patient ids: "
              "one patient's images may still fall on both sides")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check an ISIC dataset before training.")
    parser.add_argument("--metadata", default=DEFAULT_METADATA, help="label CSV(s), comma-separated")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="image folder(s), comma-separated")
    parser.add_argument("--duplicates", default=None, help="ISIC_2020_Training_Duplicates.csv")
    parser.add_argument("--malignant-non-melanoma", default="negative", choices=["negative", "positive", "drop"])
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-missing", action="store_true", help="report missing images, don't fail")
    parser.add_argument("--decode", action="store_true", help="fully decode every image (slow)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        data = load_labeled_images(args.metadata, args.images, duplicates_csv=args.duplicates,
                                   malignant_non_melanoma=args.malignant_non_melanoma,
                                   skip_missing=args.skip_missing)
        report = dataset_report(data, args.val_fraction, args.fold, args.seed, args.decode)
    except (DataError, SplitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2)) if args.json else print_report(report)
    if report["unreadable"]:
        print(f"error: {len(report['unreadable'])} unreadable image files (training would skip them)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
