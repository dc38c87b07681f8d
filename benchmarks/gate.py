"""The image-quality gate (src/data/quality.py) on real images: what it accepts and what it refuses.

    python benchmarks/gate.py                      # needs ../shared/isic-real (about a minute)

Fits the gate on the ISIC 2017 training images (2,000, 256x256), then prints, per set, the share
accepted or refused and the reasons:
  - real dermoscopy it never saw: the ISIC 2017 test set (600), HAM10000 (300, 224x224), ISIC Archive
    originals (185, full size), all of which it should accept;
  - real lesions made unusable (the ISIC 2017 test set): Gaussian blur of 2% of the short side,
    over-exposure (x2.5, clipped), under-exposure (x0.2), which it should refuse;
  - what a user might upload by mistake, as far as this machine has it offline: the photographs
    shipped with scikit-learn and matplotlib, the project's own screenshots (docs/*.png), and
    generated blank, noise, document, chart and greyscale images.
The quality gate alone cannot refuse a sharp, well-exposed colour photograph of something else:
that is the out-of-distribution half of issue 21, not built yet (docs/gate.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.data.images import decode_image
from src.data.quality import check, fit_gate, measure_file, measures

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "isic-real" / "images"


def everyday_files() -> list[Path]:
    import matplotlib
    import sklearn.datasets

    found = [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]
    found.append(Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    found += sorted((ROOT / "docs").glob("*.png"))
    return [p for p in found if p.is_file()]


def generated(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Blank, noise, documents, charts and greyscale 'scans' (stand-ins for X-rays and the like)."""
    rng = np.random.default_rng(seed)
    sets: dict[str, list[np.ndarray]] = {
        "blank": [],
        "noise": [],
        "document": [],
        "chart": [],
        "greyscale": [],
    }
    for _ in range(10):
        sets["blank"].append(np.full((300, 400, 3), rng.integers(0, 256, 3), np.uint8))
        sets["noise"].append(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
        page = np.full((400, 300, 3), 255 - int(rng.integers(0, 30)), np.uint8)
        for line in range(12):
            text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz  "), 28))
            cv2.putText(page, text, (10, 30 + 30 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1)
        sets["document"].append(page)
        chart = np.full((300, 400, 3), 255, np.uint8)
        points = np.stack([np.linspace(20, 380, 30), 150 + np.cumsum(rng.normal(0, 8, 30))], 1).astype(
            np.int32
        )
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        cv2.polylines(chart, [points], False, colour, 2)
        cv2.line(chart, (20, 280), (380, 280), (0, 0, 0), 1)
        sets["chart"].append(chart)
        scan = cv2.GaussianBlur(rng.normal(110, 40, (64, 64)).astype(np.float32), (0, 0), 3)
        scan = cv2.resize(scan, (400, 400), interpolation=cv2.INTER_CUBIC)
        cv2.circle(scan, (200, 200), int(rng.integers(60, 150)), float(rng.integers(150, 230)), -1)
        grey = np.clip(scan + rng.normal(0, 6, scan.shape), 0, 255).astype(np.uint8)
        sets["greyscale"].append(np.repeat(grey[..., None], 3, axis=2))
    return sets


def damaged(paths: list[Path]) -> dict[str, list[np.ndarray]]:
    out = {"blur 2%": [], "overexposed x2.5": [], "underexposed x0.2": []}
    for path in paths:
        image = decode_image(path, min_short_side=256)
        side = min(image.shape[:2])
        out["blur 2%"].append(cv2.GaussianBlur(image, (0, 0), 0.02 * side))
        out["overexposed x2.5"].append(np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8))
        out["underexposed x0.2"].append((image.astype(np.float32) * 0.2).astype(np.uint8))
    return out


def line(name: str, reasons: list[str], want: str) -> str:
    refused = sum(1 for r in reasons if r)
    share = (len(reasons) - refused) / len(reasons) if want == "accept" else refused / len(reasons)
    counts = ", ".join(f"{r} {n}" for r, n in Counter(r for r in reasons if r).most_common())
    return f"| {name} | {len(reasons)} | {want} | {share:.1%} | {counts or '-'} |"


def main(argv=None) -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs the shared real images in {SHARED}", file=sys.stderr)
        return 1
    labels = pd.read_csv(SHARED / "labels.csv")

    def files(rows) -> list[Path]:
        return [SHARED / p for p in labels.loc[rows, "relpath"]]

    isic2017 = labels["dataset"].eq("ISIC2017")
    split = {s: files(isic2017 & labels["split"].eq(s)) for s in ("train", "test")}
    gate = fit_gate([measure_file(p) for p in split["train"]])
    for reason, rule in gate.items():
        print(
            f"  {reason}: {rule['measure']} {'<' if rule['side'] == 'low' else '>'} {rule['threshold']:.4g}"
        )
    rows = ["| set | images | should | share as it should | reasons |", "|---|---|---|---|---|"]
    real = {
        "ISIC 2017 test": split["test"],
        "HAM10000 (224 px)": files(labels["dataset"].eq("HAM10000")),
        "ISIC Archive originals": files(labels["dataset"].eq("ISIC_Archive_UDA1")),
    }
    for name, paths in real.items():
        rows.append(line(name, [check(gate, measure_file(p)) for p in paths], "accept"))
    for name, images in damaged(split["test"]).items():
        rows.append(line(f"ISIC 2017 test, {name}", [check(gate, measures(im)) for im in images], "refuse"))
    rows.append(
        line(
            "photographs and screenshots", [check(gate, measure_file(p)) for p in everyday_files()], "refuse"
        )
    )
    for name, images in generated().items():
        rows.append(line(f"generated {name}", [check(gate, measures(im)) for im in images], "refuse"))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
