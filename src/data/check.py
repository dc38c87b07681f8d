"""Check an ISIC dataset before training: formats, counts, missing and unreadable files, and the
leak-free split.

    python src/data/check.py                                   # data/metadata.csv + data/isic/
    python src/data/check.py --metadata CSV --images DIR [--json] [--decode]

Prints the detected format, rows, melanomas, patients, missing and unreadable files, and the
grouped split with its leak check; exits 1 with a clear message on bad data.
"""

from __future__ import annotations

import argparse
import json
import sys

from src.data.labels import (
    DEFAULT_IMAGES,
    DEFAULT_METADATA,
    LabeledImages,
    find_unreadable,
    load_labeled_images,
)
from src.data.metadata import MALIGNANT_POLICIES, invalid_ages_note
from src.data.splits import grouping_description, make_split, split_summary
from src.errors import command

MALIGNANT_NOTE = {
    "negative": "counted as benign (--malignant-non-melanoma=positive counts them)",
    "positive": "counted as positive (included in the melanoma count above)",
    "drop": "left out",
}


def dataset_report(
    data: LabeledImages,
    val_fraction: float,
    fold: int,
    seed: int,
    decode: bool = False,
    policy: str = "negative",
) -> dict:
    table = data.table
    unreadable = find_unreadable(table["path"], decode)
    split = make_split(table, val_fraction, fold, seed)
    return {
        "metadata": [str(p) for p in data.metadata_paths],
        "formats": data.metadata.formats,
        "rows": int(len(table)),
        "melanoma": int(table["target"].sum()),
        "melanoma_rate": round(float(table["target"].mean()), 5),
        "other_malignant": data.metadata.other_malignant,
        "malignant_non_melanoma": policy,
        "patients": int(table.loc[table["patient_id"] != "", "patient_id"].nunique()),
        "split_groups": int(split["group"].nunique()),
        "grouping": grouping_description(split),
        "dropped": data.metadata.dropped,
        "invalid_ages": data.metadata.invalid_ages,
        "missing_images": len(data.missing),
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable.items()],
        "cache": data.cache_dir,
        "from_cache": data.from_cache,
        "split": split_summary(split),
    }


def print_report(report: dict) -> None:
    print(f"metadata:      {', '.join(report['metadata'])} (format: {', '.join(report['formats'])})")
    patients = (
        f"{report['patients']:,}"
        if report["patients"]
        else f"none listed (split by lesion, else image: {report['split_groups']:,} groups)"
    )
    print(
        f"images:        {report['rows']:,}   melanoma: {report['melanoma']:,} "
        f"({100 * report['melanoma_rate']:.2f}%)   patients: {patients}"
    )
    if report["other_malignant"]:
        print(
            f"malignant:     {report['other_malignant']:,} malignant but not melanoma (BCC, SCC...), "
            + MALIGNANT_NOTE[report["malignant_non_melanoma"]]
        )
    for reason, n in report["dropped"].items():
        print(f"dropped:       {n:,} rows ({reason})")
    if report["invalid_ages"]:
        print(f"ages:          {invalid_ages_note(report['invalid_ages'])}")
    print(f"missing files: {report['missing_images']}   unreadable files: {len(report['unreadable'])}")
    for item in report["unreadable"][:10]:
        print(f"  {item['path']}: {item['reason']}")
    if report["cache"]:
        print(
            f"cache:         {report['cache']} ({report['from_cache']:,} of {report['rows']:,} images; "
            f"the rest are read from the originals)"
        )
    unit = "patients" if report["split"]["group_kinds"] == ["patient"] else "groups"
    for name in ("train", "val"):
        s = report["split"].get(name, {})
        print(
            f"{name + ':':<15}{s.get('images', 0):,} images, {s.get('melanoma', 0):,} melanoma "
            f"({100 * s.get('melanoma_rate', 0):.2f}%), {s.get('groups', 0):,} {unit}"
        )
    leak = report["split"]["groups_in_both"]
    if leak:
        print(f"leak check:    {leak} {unit} in both splits!")
    elif unit == "patients":
        print("leak check:    OK, no patient in both splits")
    else:
        print(f"leak check:    no group in both splits ({report['grouping']})")


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check an ISIC dataset before training.")
    parser.add_argument("--metadata", default=DEFAULT_METADATA, help="label CSV(s), comma-separated")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="image folder(s), comma-separated")
    parser.add_argument("--duplicates", default=None, help="ISIC_2020_Training_Duplicates.csv")
    parser.add_argument("--malignant-non-melanoma", default="negative", choices=MALIGNANT_POLICIES)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-missing", action="store_true", help="report missing images, don't fail")
    parser.add_argument("--decode", action="store_true", help="fully decode every image (slow)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    data = load_labeled_images(
        args.metadata,
        args.images,
        duplicates_csv=args.duplicates,
        malignant_non_melanoma=args.malignant_non_melanoma,
        skip_missing=args.skip_missing,
    )
    report = dataset_report(
        data, args.val_fraction, args.fold, args.seed, args.decode, args.malignant_non_melanoma
    )
    print(json.dumps(report, indent=2)) if args.json else print_report(report)
    if report["unreadable"]:
        print(
            f"error: {len(report['unreadable'])} unreadable image files (training would skip them)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
