"""The winners' recipe options, measured: one small CPU recipe on real ISIC 2017 images, then each
option on top of it, every model tested on the ISIC 2017 test set.

    python benchmarks/recipes.py [--out runs/recipes] [--only NAME ...]   # needs ../shared/isic-real

Trains on ISIC 2017 Training + Validation (2,150 images, 256 px copies; a random 20% for
validation, the images have no patient ids), from scratch (no ImageNet weights offline), then runs
evaluate.py on the run's split (threshold, calibration, checks) and on the 600-image ISIC 2017 test
set. Prints one Markdown row per variant: test ROC AUC with its 95% bootstrap interval (over images:
ISIC 2017 has no patient ids), pAUC, and minutes of training. Each run takes a few minutes on a
2-core CPU; docs/training.md has the table this printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "isic-real"
CSV = SHARED / "isic2017_csv"
BASE = [
    f"--DATA_DIR={SHARED / 'images' / 'isic2017_256'}",
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
    "whole image, padded": ["--INPUT_FIT=pad"],
}


def run(*args) -> None:
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def measure(name: str, extra: list[str], out: Path) -> str:
    folder = out / name.split(" (")[0].replace(" ", "_").replace("'", "")
    start = time.perf_counter()
    run("src/training/train.py", *BASE, *extra, f"--CHECKPOINT_DIR={folder}")
    minutes = (time.perf_counter() - start) / 60
    best = folder / "best.pth"
    run("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 1000)
    test, images = CSV / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", SHARED / "images" / "isic2017_256"
    run("src/training/evaluate.py", "--checkpoint", best, "--metadata", test, "--images", images,
        "--out", folder / "test", "--bootstrap", 1000)  # fmt: skip
    val = json.loads((folder / "eval" / "report.json").read_text())["metrics"]["roc_auc"]
    report = json.loads((folder / "test" / "report.json").read_text())
    auc, (low, high) = report["metrics"]["roc_auc"], report["ci95"]["roc_auc"]
    pauc = report["metrics"]["pauc_tpr80"]
    return f"| {name} | {val:.3f} | {auc:.3f} [{low:.3f}, {high:.3f}] | {pauc:.3f} | {minutes:.1f} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--only", nargs="*", help="variants whose name starts with one of these")
    args = ap.parse_args(argv)
    if not CSV.is_dir():
        print(f"needs the shared real ISIC 2017 files in {CSV}", file=sys.stderr)
        return 1
    print("| variant | validation AUC | ISIC 2017 test ROC AUC [95% CI] | test pAUC | training minutes |")
    print("|---|---|---|---|---|")
    for name, extra in VARIANTS.items():
        if not args.only or any(name.startswith(o) for o in args.only):
            print(measure(name, extra, Path(args.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
