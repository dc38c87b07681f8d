"""The gate (image quality and "unlike training images") on real images: what it accepts and refuses.

    python benchmarks/gate.py --checkpoint CKPT    # needs ../shared/isic-real (a few minutes)

CKPT is a checkpoint that evaluate.py calibrated on its run's validation split (that fits both
checks: src/data/quality.py and src/core/familiarity.py); docs/gate.md trains one on ISIC 2017. Every
image goes through Scorer.score_bytes, the service's path (encoded bytes in, decoded once). Prints
the share accepted or refused per set, with the reasons:
  - real dermoscopy it never saw: the ISIC 2017 test set (600), HAM10000 (300, 224x224), ISIC Archive
    originals (185, full size), all of which it should accept;
  - real lesions made unusable (the ISIC 2017 test set): Gaussian blur of 2% of the short side,
    over-exposure (x2.5, clipped), under-exposure (x0.2), which it should refuse;
  - what a user might upload by mistake, as far as this machine has it offline: the photographs and
    pictures shipped with scikit-learn and matplotlib, an MRI slice (matplotlib's s1045.ima), the
    project's own screenshots (docs/*.png), and generated blank, noise, document, chart and
    greyscale images.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from src.data.images import decode_image
from src.inference.predictor import load_scorer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "isic-real" / "images"


def everyday_files() -> list[Path]:
    import matplotlib
    import sklearn.datasets

    samples = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    found = [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]
    found += [samples / n for n in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    found += sorted((ROOT / "docs").glob("*.png"))
    return [p for p in found if p.is_file()]


def mri_slice() -> list[np.ndarray]:
    """matplotlib's sample MRI slice (256x256, 16-bit little-endian), as an 8-bit image."""
    import gzip

    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "s1045.ima.gz"
    if not path.is_file():
        return []
    raw = np.frombuffer(gzip.open(path).read(), "<u2").reshape(256, 256).astype(np.float32)
    grey = (255 * raw / raw.max()).astype(np.uint8)
    return [np.repeat(grey[..., None], 3, axis=2)]


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


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint evaluate.py calibrated")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs the shared real images in {SHARED}", file=sys.stderr)
        return 1
    scorer = load_scorer(args.checkpoint)
    if not scorer.checks():
        print(f"{args.checkpoint} has no checks: run evaluate.py on it first", file=sys.stderr)
        return 1
    labels = pd.read_csv(SHARED / "labels.csv")

    def files(rows) -> list[Path]:
        return [SHARED / p for p in labels.loc[rows, "relpath"]]

    def reasons(items) -> list[str]:
        found = []
        for item in tqdm(items, leave=False):
            data = item.read_bytes() if isinstance(item, Path) else png(item)
            found.append(scorer.score_bytes(data, scorer.views(None), str(item)[:40])[1] or "")
        return found

    test = files(labels["dataset"].eq("ISIC2017") & labels["split"].eq("test"))
    rows = ["| set | images | should | share as it should | reasons |", "|---|---|---|---|---|"]
    real = {
        "ISIC 2017 test": test,
        "HAM10000 (224 px)": files(labels["dataset"].eq("HAM10000")),
        "ISIC Archive originals": files(labels["dataset"].eq("ISIC_Archive_UDA1")),
    }
    rows += [line(name, reasons(paths), "accept") for name, paths in real.items()]
    rows += [line(f"ISIC 2017 test, {n}", reasons(ims), "refuse") for n, ims in damaged(test).items()]
    mistakes = {"photographs, pictures and screenshots": everyday_files(), "MRI slice": mri_slice()}
    mistakes.update({f"generated {name}": images for name, images in generated().items()})
    found = {name: reasons(items) for name, items in mistakes.items()}
    rows += [line(name, r, "refuse") for name, r in found.items()]
    rows.append(line("all non-dermoscopy", sum(found.values(), []), "refuse"))
    print(f"{scorer.version}: checks {', '.join(scorer.checks())}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
