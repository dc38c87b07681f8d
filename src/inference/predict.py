"""Predict melanoma probabilities for new images.

    python src/inference/predict.py --checkpoint CKPT INPUT [--out predictions.csv] [--tta] [--explain DIR]

CKPT is a training checkpoint (.pth) or an export (.onnx, also int8). INPUT is one image, a folder
of images (or one level down), or a metadata CSV in any supported format (labels optional; images
from --images, default the CSV's folder). Writes image_name,target (the ISIC/Kaggle submission
columns; target is the calibrated melanoma probability), label (1 = melanoma at the saved
threshold) and error. Unreadable files are listed with their error; the rest are still predicted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import pandas as pd
from tqdm import tqdm

from src.data.atomic import atomic_write_bytes, atomic_write_text
from src.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, index_images
from src.data.labels import DataError
from src.data.loader import ImageDataset, default_workers, make_loader
from src.data.metadata import MetadataError, read_metadata
from src.data.transforms import load_input
from src.inference.predictor import Predictor
from src.training.checkpoint import CheckpointError


def list_inputs(source: str, images: str | None) -> pd.DataFrame:
    """(image_name, path) rows for an image, a folder or a metadata CSV; path is None when not found."""
    path = Path(source)
    if path.is_dir():
        found = index_images(path)
        if not found:
            raise DataError(f"no .jpg/.jpeg/.png images in {path}/ (or one folder below)")
        return pd.DataFrame({"image_name": list(found), "path": list(found.values())})
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if not path.is_file():
            raise DataError(f"image not found: {path}")
        return pd.DataFrame({"image_name": [path.stem], "path": [str(path)]})
    if path.suffix.lower() == ".csv":
        names = read_metadata(path, require_labels=False).table["image_name"]
        found = index_images(images or path.parent)
        return pd.DataFrame({"image_name": names, "path": [found.get(n) for n in names]})
    raise DataError(f"{source} is not an image, a folder or a .csv file")


def error_for(path) -> str:
    if path is None:
        return "file not found"
    try:
        decode_image(path, min_short_side=32)
        return "could not be read"
    except ImageDecodeError as e:
        return str(e).split(": ", 1)[-1]


def predict_table(
    predictor: Predictor, rows: pd.DataFrame, batch_size: int, workers: int, tta: bool
) -> pd.DataFrame:
    present = rows["path"].notna().to_numpy()
    readable = rows[present].reset_index(drop=True)
    loader = make_loader(
        ImageDataset(readable["path"], np.zeros(len(readable)), predictor.img_size),
        batch_size,
        workers=default_workers(workers),
        pin_memory=predictor.kind == "pytorch" and predictor.rt.device.type == "cuda",
    )
    probs, ok = np.full(len(readable), np.nan), np.zeros(len(readable), bool)
    for images, _, index, good in tqdm(loader, desc="predict", unit="batch"):
        p = predictor.probabilities(predictor.logits(images, tta))
        probs[index.numpy()], ok[index.numpy()] = p, good.numpy()
    probs[~ok] = np.nan
    out = rows[["image_name"]].copy()
    out["target"], out["error"] = np.nan, ""
    out.loc[present, "target"] = probs
    failed = present.copy()
    failed[present] = ~ok
    out.loc[failed | ~present, "error"] = [error_for(p) for p in rows.loc[failed | ~present, "path"]]
    out["label"] = np.where(out["target"].notna(), (out["target"] >= predictor.threshold).astype(int), "")
    return out[["image_name", "target", "label", "error"]]


def write_explanations(predictor: Predictor, rows: pd.DataFrame, results: pd.DataFrame, folder: Path) -> int:
    from src.inference.gradcam import grad_cam, overlay_png

    if predictor.kind != "pytorch":
        raise DataError("--explain needs a PyTorch checkpoint (.pth): Grad-CAM uses gradients")
    done = 0
    for name, path, error in tqdm(
        list(zip(rows["image_name"], rows["path"], results["error"], strict=True)), desc="grad-cam"
    ):
        if not error:
            image = load_input(path, predictor.img_size)
            atomic_write_bytes(
                folder / f"{name}_gradcam.png", overlay_png(image, grad_cam(predictor.model, image))
            )
            done += 1
    return done


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Predict melanoma probabilities for images.")
    ap.add_argument("--checkpoint", required=True, help="best_model_epochN.pth or an exported .onnx")
    ap.add_argument("input", help="an image, a folder of images, or a metadata CSV")
    ap.add_argument("--images", help="image folder for a CSV input (default: the CSV's folder)")
    ap.add_argument("--out", default="predictions.csv")
    ap.add_argument("--tta", action="store_true", help="average the 8 flips/transposes")
    ap.add_argument("--explain", metavar="DIR", help="write Grad-CAM overlays (PNG) to DIR")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--workers",
        type=int,
        default=-1,
        help="data loading processes (-1: three quarters of the cores, at most 12)",
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        predictor = Predictor(args.checkpoint)
        rows = list_inputs(args.input, args.images)
        results = predict_table(predictor, rows, args.batch_size, args.workers, args.tta)
        atomic_write_text(args.out, results.to_csv(index=False))
        if args.explain:
            n = write_explanations(predictor, rows, results, Path(args.explain))
            print(f"wrote {n} Grad-CAM overlays to {args.explain}/")
    except (CheckpointError, DataError, MetadataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = int((results["error"] != "").sum())
    print(f"{len(results) - bad} images predicted, {bad} unreadable (listed with their error) -> {args.out}")
    if predictor.calibrated_on is None:
        print(
            "note: this model has no fitted threshold/calibration yet (threshold 0.5); run "
            "src/training/evaluate.py on its checkpoint first",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
