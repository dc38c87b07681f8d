"""The winners' recipe options, measured: one small CPU recipe on real ISIC 2017 images, then each
option on top of it, every model tested on the ISIC 2017 test set.

    python benchmarks/recipes.py [--out runs/recipes] [--only NAME ...]   # needs ../shared/isic-real

Trains on ISIC 2017 Training + Validation (2,150 images, 256 px copies; a random 20% for
validation, the images have no patient ids), from scratch (no ImageNet weights offline), then runs
evaluate.py on the run's split (threshold, calibration, checks) and on the 600-image ISIC 2017 test
set. Prints one Markdown row per variant: test ROC AUC with its 95% bootstrap interval (over images:
ISIC 2017 has no patient ids), pAUC, and minutes of training. Each run takes a few minutes on a
2-core CPU; docs/training.md has the table this printed.

The 256 px copies are whole images squashed square (checked against the 178 full-size originals
in ../shared), so cropping and padding them are the same. For INPUT_FIT, `--aspect` first writes
copies stretched back to each image's original shape (the archive's width and height where
../shared has the original, else 4:3, the commonest ISIC 2017 shape), then trains the centre crop
and the padded whole image on them and prints the paired bootstrap difference of their test AUCs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.core import metrics as M

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "isic-real"
CSV = SHARED / "isic2017_csv"
BASE = [
    f"--METADATA_CSV={CSV / 'ISIC-2017_Training_Part3_GroundTruth.csv'},"
    f"{CSV / 'ISIC-2017_Validation_Part3_GroundTruth.csv'}",
    "--CACHE_DIR=",
    "--PRETRAINED=False",
    "--ARCH=resnet18",
    "--IMG_SIZE=96",
    "--NUM_EPOCHS=6",
    "--OVERWRITE=True",
]
VARIANTS = {
    "today's recipe (resnet18, 96 px, 6 epochs)": [],
    "EfficientNet-B0": ["--ARCH=efficientnet_b0"],
    "diagnosis target (softmax over 3)": ["--TARGET=diagnosis"],
    "EMA of weights (0.99)": ["--EMA_DECAY=0.99"],
    "Shades-of-Gray colour constancy": ["--COLOUR_CONSTANCY=True"],
}
FITS = {"original shape, centre crop": ["--INPUT_FIT=crop"], "original shape, padded": ["--INPUT_FIT=pad"]}
COMMONEST_SHAPE = 4 / 3  # 108 of the 178 ISIC 2017 originals in ../shared are 4:3


def run(*args) -> None:
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def original_shape_copies(out: Path) -> Path:
    """The 256 px copies stretched back to their originals' shape (short side 256)."""
    folder = out / "isic2017_original_shape"
    labels = pd.read_csv(SHARED / "images" / "labels.csv")
    originals = labels[labels["relpath"].str.startswith("isic_archive_fullres/")]
    shape = dict(zip(originals["image_name"], originals["width"] / originals["height"], strict=True))
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((SHARED / "images" / "isic2017_256").glob("*.jpg")):
        if not (folder / path.name).exists():
            ratio = shape.get(path.stem, COMMONEST_SHAPE)
            size = (round(256 * ratio), 256) if ratio >= 1 else (256, round(256 / ratio))
            image = cv2.resize(cv2.imread(str(path)), size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(folder / path.name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def folder_name(variant: str) -> str:
    return variant.split(" (")[0].replace(",", "").replace("'", "").replace(" ", "_")


def measure(name: str, extra: list[str], out: Path, images: Path = SHARED / "images" / "isic2017_256") -> str:
    folder = out / folder_name(name)
    start = time.perf_counter()
    run("src/training/train.py", *BASE, f"--DATA_DIR={images}", *extra, f"--CHECKPOINT_DIR={folder}")
    minutes = (time.perf_counter() - start) / 60
    best = folder / "best.pth"
    run("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 1000)
    test = CSV / "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    run("src/training/evaluate.py", "--checkpoint", best, "--metadata", test, "--images", images,
        "--out", folder / "test", "--bootstrap", 1000)  # fmt: skip
    val = json.loads((folder / "eval" / "report.json").read_text())["metrics"]["roc_auc"]
    report = json.loads((folder / "test" / "report.json").read_text())
    auc, (low, high) = report["metrics"]["roc_auc"], report["ci95"]["roc_auc"]
    pauc = report["metrics"]["pauc_tpr80"]
    return f"| {name} | {val:.3f} | {auc:.3f} [{low:.3f}, {high:.3f}] | {pauc:.3f} | {minutes:.1f} |"


def compare_fits(out: Path, seed: int) -> float:
    """One row per fit on the original-shape copies, then pad minus crop, paired over test images."""
    images, scores = original_shape_copies(out), []
    for name, extra in FITS.items():
        variant = f"{name}, seed {seed}"
        print(measure(variant, [*extra, f"--SEED={seed}"], out, images), flush=True)
        scores.append(
            pd.read_csv(out / folder_name(variant) / "test" / "predictions.csv").sort_values("image_name")
        )
    crop, pad = scores
    diff, low, high = M.paired_difference(crop["target"], crop["logit"], pad["logit"], crop["image_name"])
    print(f"| padded minus centre crop (seed {seed}), paired | | {diff:+.3f} [{low:+.3f}, {high:+.3f}] | | |")
    return diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--only", nargs="*", help="variants whose name starts with one of these")
    ap.add_argument(
        "--aspect", nargs="+", type=int, metavar="SEED", help="compare INPUT_FIT, one pair per seed"
    )
    args = ap.parse_args(argv)
    if not CSV.is_dir():
        print(f"needs the shared real ISIC 2017 files in {CSV}", file=sys.stderr)
        return 1
    print("| variant | validation AUC | ISIC 2017 test ROC AUC [95% CI] | test pAUC | training minutes |")
    print("|---|---|---|---|---|")
    for name, extra in VARIANTS.items():
        if args.aspect is None and (not args.only or any(name.startswith(o) for o in args.only)):
            print(measure(name, extra, Path(args.out)), flush=True)
    diffs = [compare_fits(Path(args.out), seed) for seed in args.aspect or []]
    if len(diffs) > 1:  # the seed also draws the split: this spread is the training's own noise
        print(f"| padded minus centre crop, mean of {len(diffs)} seeds (sd) | | {np.mean(diffs):+.3f} "
              f"({np.std(diffs, ddof=1):.3f}) | | |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
