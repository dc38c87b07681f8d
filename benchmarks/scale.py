"""Scale: the pipeline's commands on a synthetic ISIC-2024-shaped set at two or three sizes.

    python benchmarks/scale.py                                   # 25,000 and 200,000 images
    python benchmarks/scale.py --sizes 5000,20000,80000 --stages check,dedup,context

Builds, per size, N distinct 110-150 px crops in one HDF5 file with 2% planted near-copies and
metadata in the 55-column layout (benchmarks/synthetic2024.py), then runs each stage as the user
would, as a command, and measures its wall time and the peak memory (RSS) of its largest process
(the command or one of its workers, from wait4). Stages:

  check     src/data/check.py: metadata, the HDF5 index, every header, the grouped split
  dedup     src/data/dedup.py from nothing: fingerprints, then pairing; planted copies found
  pairing   dedup.py again with the fingerprints stored: pairing alone
  loading   one pass of every image through the training DataLoader (2 workers, 128 px)
  context   src/training/context.py on the metadata alone (features and trees, 5 folds)
  train     src/training/train.py: one short epoch (all melanomas plus 4x as many benign images,
            ResNet18 at 32 px) and validation on a fifth of the set, with near-copies merged
  predict   src/inference/predict.py with that checkpoint over the whole HDF5 file
  calibrate src/training/evaluate.py on that run's validation split: threshold, calibration, the
            quality gate and the feature distance (fitted on up to 5,000 training images)
  evaluate  src/training/evaluate.py with that calibrated checkpoint on the whole set as a
            labelled set (1,000 bootstrap resamples, the checks, near-copies of training images)

Prints a table (and one JSON line per measurement), then each stage's growth exponent
log(t2 / t1) / log(n2 / n1) between consecutive sizes: 1.0 is linear, 2.0 all pairs. Exits 1 if
dedup found under 97% of the planted copies at any size. At the defaults it takes about 25
minutes on 2 cores and 3 GB of disk (the temporary folder, removed after).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from synthetic2024 import write_set  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("check", "dedup", "pairing", "loading", "context", "train", "predict", "calibrate", "evaluate")
LOADING = """
import sys, numpy as np
from src.data.images import index_images
from src.data.loader import ImageDataset, make_loader
paths = list(index_images(sys.argv[1]).values())
for _ in make_loader(ImageDataset(paths, np.zeros(len(paths)), 128), 64, workers=2):
    pass
"""


def run(args: list[str], log: Path) -> dict:
    """Run a command; its wall time and the largest RSS of it and its waited-for children."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"{args[0]} failed ({proc.returncode}); its output: {log}\n{log.read_text()[-2000:]}"
        )
    return {"seconds": round(time.perf_counter() - start, 1), "peak_mb": round(usage.ru_maxrss / 1024)}


def commands(stage: str, s: dict, work: Path) -> list[str]:
    data, meta = str(s["hdf5"]), str(s["metadata"])
    train_out = work / "run"
    return {
        "check": ["src/data/check.py", "--metadata", meta, "--images", data, "--json"],
        "dedup": ["src/data/dedup.py", "--metadata", meta, "--images", data, "--out", str(work / "dedup")],
        "pairing": ["src/data/dedup.py", "--metadata", meta, "--images", data, "--out", str(work / "dedup")],
        "loading": ["-c", LOADING, data],
        "context": [
            "src/training/context.py", "--metadata", meta, "--out", str(work / "context"),
            "--bootstrap", "100",
        ],
        "train": [
            "src/training/train.py", f"--DATA_DIR={data}", f"--METADATA_CSV={meta}",
            f"--CHECKPOINT_DIR={train_out}",
            "--ARCH=resnet18", "--PRETRAINED=False", "--IMG_SIZE=32", "--BATCH_SIZE=64", "--NUM_EPOCHS=1",
            "--NEGATIVES_PER_POSITIVE=4", "--CACHE_DIR=", "--OVERWRITE=True",
        ],
        "predict": [
            "src/inference/predict.py", "--checkpoint", str(train_out / "last.pth"), data,
            "--out", str(work / "predictions.csv"),
        ],
        "calibrate": ["src/training/evaluate.py", "--checkpoint", str(train_out / "last.pth")],
        "evaluate": [
            "src/training/evaluate.py", "--checkpoint", str(train_out / "last.pth"), "--metadata", meta,
            "--images", data, "--out", str(work / "evaluation"),
        ],
    }[stage]  # fmt: skip


def planted_found(s: dict, work: Path) -> dict:
    found = pd.read_csv(work / "dedup" / "duplicates.csv")
    pairs = {frozenset(p) for p in zip(found["image_1"], found["image_2"], strict=True)}
    planted = {frozenset(p) for p in zip(s["planted"]["original"], s["planted"]["copy"], strict=True)}
    return {"planted": len(planted), "found": len(planted & pairs), "other_pairs": len(pairs - planted)}


def measure(n: int, stages: list[str], folder: Path) -> list[dict]:
    work = folder / f"n{n}"
    started = time.perf_counter()
    s = write_set(work, n)
    print(f"# {n:,} images written in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for stage in stages:
        if stage == "pairing":
            (work / "dedup" / "near_pairs.npz").unlink(missing_ok=True)
        row = {"stage": stage, "images": n, **run(commands(stage, s, work), work / f"{stage}.log")}
        if stage in ("dedup", "pairing"):
            row.update(planted_found(s, work))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    sizes = sorted(frame["images"].unique())
    lines = [
        "| stage | " + " | ".join(f"{n:,} images" for n in sizes) + " | growth exponent |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    for stage, part in frame.groupby("stage", sort=False):
        part = part.set_index("images")
        cells = [f"{part.at[n, 'seconds']:.1f} s, {part.at[n, 'peak_mb']:,} MB" for n in sizes]
        growth = [
            math.log(part.at[b, "seconds"] / part.at[a, "seconds"]) / math.log(b / a)
            for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        lines.append(
            f"| {stage} | " + " | ".join(cells) + " | " + ", ".join(f"{g:.2f}" for g in growth) + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="25000,200000", help="images per set, comma-separated")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    sizes = sorted(int(n) for n in args.sizes.split(","))
    stages = [s for s in STAGES if s in args.stages.split(",")]
    if "pairing" in stages and "dedup" not in stages:
        stages.insert(stages.index("pairing"), "dedup")
    if "predict" in stages and "train" not in stages:
        stages.insert(stages.index("predict"), "train")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [row for n in sizes for row in measure(n, stages, Path(tmp))]
    print(table(rows))
    short = [r for r in rows if "planted" in r and r["found"] < 0.97 * r["planted"]]
    for r in short:
        print(f"FAIL: {r['stage']} at {r['images']:,} images: {r['found']} of {r['planted']} planted found")
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
