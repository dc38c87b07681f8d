"""Predict melanoma probabilities for new images.

    python src/inference/predict.py --checkpoint CKPT INPUT [--out predictions.csv] [--tta] [--explain DIR]
    python src/inference/predict.py --checkpoint CKPT test-metadata.csv --images test-image.hdf5 \
        --context checkpoints/context/context_model.json --submission --out submission.csv

CKPT is a training checkpoint (.pth) or an export (.onnx, also int8). INPUT is one image, a folder
of images (or one level down), an ISIC 2024 image HDF5 file, or a metadata CSV in any supported
format (labels optional; images from --images, default the CSV's folder). Writes one answer per
image: image_name, target (the calibrated melanoma probability), label (1 = at or above the
threshold), decision ("above threshold" or "below threshold"), threshold, stage (which model gave
the answer) and error. Unreadable files, and images the metadata lists but the folder or HDF5 file
lacks, are listed with their error; the rest are still predicted. TTA follows the calibration.

--context applies the context stage (src/training/context.py) to a metadata CSV: all lesions of a
patient are scored together, and the answer is the context stage's (target, label and decision at
its own threshold); image_probability (the image model alone, secondary) and patient_rank (1 = the
lesion that stands out most among the patient's) are added. --submission writes only the
competition's two columns (isic_id,target for ISIC 2024 and Archive ids, else image_name,target).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from src.core.context_model import ContextModel
from src.core.decision import ABOVE, decision
from src.data.atomic import atomic_write_bytes, atomic_write_text
from src.data.images import HDF5_EXTENSIONS, IMAGE_EXTENSIONS, ImageDecodeError, decode_image, index_images
from src.data.labels import DataError
from src.data.loader import ImageDataset, default_workers, make_loader
from src.data.metadata import invalid_ages_note, read_metadata, text
from src.data.transforms import load_input
from src.errors import command
from src.inference.predictor import Predictor


def list_inputs(source: str, images: str | None) -> pd.DataFrame:
    """(image_name, path) rows for an image, a folder, an HDF5 file or a metadata CSV (then with its
    metadata columns, and the id column name in attrs["id_column"]); path is None when not found."""
    path = Path(source)
    if path.suffix.lower() in HDF5_EXTENSIONS:
        if not path.is_file():
            raise DataError(f"HDF5 file not found: {path}")
        found = index_images(path)
        rows = pd.DataFrame({"image_name": list(found), "path": list(found.values())})
        rows.attrs["id_column"] = "isic_id"  # the ISIC 2024 layout
        return rows
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
        metadata = read_metadata(path, require_labels=False)
        found = index_images(images or path.parent)
        rows = metadata.table.assign(path=[found.get(n) for n in metadata.table["image_name"]])
        isic_ids = any(f.startswith(("isic2024", "isic_archive")) for f in metadata.formats)
        rows.attrs["id_column"] = "isic_id" if isic_ids else "image_name"
        rows.attrs["invalid_ages"] = metadata.invalid_ages
        return rows
    raise DataError(f"{source} is not an image, a folder or a .csv file")


def error_for(path) -> str:
    if not isinstance(path, str):  # None, or NaN under pandas 3: listed in the metadata, not found
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
    logits, ok = np.full(len(readable), np.nan), np.zeros(len(readable), bool)
    for images, _, index, good in tqdm(loader, desc="predict", unit="batch"):
        logits[index.numpy()], ok[index.numpy()] = predictor.logits(images, tta), good.numpy()
    logits[~ok] = np.nan
    probs = predictor.probabilities(logits)
    out = rows[["image_name"]].copy()
    out["target"], out["logit"], out["error"] = np.nan, np.nan, ""
    out.loc[present, "target"], out.loc[present, "logit"] = probs, logits
    failed = present.copy()
    failed[present] = ~ok
    out.loc[failed | ~present, "error"] = [error_for(p) for p in rows.loc[failed | ~present, "path"]]
    out = with_decisions(out, predictor.threshold, "image")
    return out[["image_name", "target", "label", "decision", "threshold", "stage", "error", "logit"]]


def with_decisions(out: pd.DataFrame, threshold: float, stage: str) -> pd.DataFrame:
    """label, decision, threshold and stage of each scored row (src/core/decision.py); empty where
    the row has no score."""
    scored = out["target"].notna().to_numpy()
    decisions = np.array([decision(p, threshold) for p in out["target"].fillna(0.0)])
    out["label"] = np.where(scored, (decisions == ABOVE).astype(int).astype(str), "")
    out["decision"] = np.where(scored, decisions, "")
    out["threshold"], out["stage"] = threshold, stage
    return out


def apply_context(model: ContextModel, rows: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The context stage over all rows at once, so each patient's lesions are compared together."""
    if "patient_id" not in rows:
        raise DataError("--context needs metadata (patient, age, sex, site): give a metadata CSV as INPUT")
    scored = model.score(rows, results["logit"].to_numpy() if model.uses_image_score else None)
    out = results.assign(image_probability=results["target"])
    failed = (out["error"] != "").to_numpy() if model.uses_image_score else np.zeros(len(out), bool)
    out["target"] = np.where(failed, np.nan, scored["probability"])
    out = with_decisions(out, model.threshold, "context")
    out["patient_rank"] = np.where(failed, np.nan, scored["patient_rank"])
    columns = ["image_name", "target", "label", "decision", "threshold", "stage", "image_probability"]
    return out[[*columns, "patient_rank", "error", "logit"]]


def input_notes(rows: pd.DataFrame, context: ContextModel | None) -> list[str]:
    """What the metadata held that prediction read as missing: bad ages, sites the model never saw."""
    notes = [invalid_ages_note(rows.attrs["invalid_ages"])] if rows.attrs.get("invalid_ages") else []
    if context is not None and "anatom_site" in rows:
        sites = text(rows["anatom_site"]).str.lower()
        unseen = sites[(sites != "") & ~sites.isin(context.sites)]
        if len(unseen):
            shown = ", ".join(repr(site[:40]) for site in sorted(set(unseen))[:5])
            notes.append(
                f"{len(unseen):,} images have a site the context model never saw ({shown}): read as missing"
            )
    return notes


def submission(results: pd.DataFrame, id_column: str) -> str:
    """The competition's two columns; every row must have a score."""
    missing = results["target"].isna()
    if missing.any():
        shown = ", ".join(results.loc[missing, "image_name"].head(5))
        raise DataError(f"{int(missing.sum())} images have no score ({shown}); a submission needs every row")
    return results[["image_name", "target"]].rename(columns={"image_name": id_column}).to_csv(index=False)


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
    ap.add_argument("--checkpoint", required=True, help="best.pth or an exported .onnx")
    ap.add_argument("input", help="an image, a folder of images, or a metadata CSV")
    ap.add_argument("--images", help="image folder for a CSV input (default: the CSV's folder)")
    ap.add_argument("--out", default="predictions.csv")
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average the 8 flips/transposes (default: as the model's threshold was fitted; the other "
        "choice is refused)",
    )
    ap.add_argument("--explain", metavar="DIR", help="write Grad-CAM overlays (PNG) to DIR")
    ap.add_argument(
        "--context", metavar="MODEL", help="context_model.json: fuse metadata and patient context"
    )
    ap.add_argument("--submission", action="store_true", help="write only the id and target columns")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--workers",
        type=int,
        default=-1,
        help="data loading processes (-1: three quarters of the cores, at most 12)",
    )
    return ap.parse_args(argv)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    predictor = Predictor(args.checkpoint)
    tta = predictor.views(args.tta)
    if args.explain and predictor.kind != "pytorch":  # before any work, not after the CSV
        raise DataError("--explain needs a PyTorch checkpoint (.pth): Grad-CAM uses gradients")
    rows = list_inputs(args.input, args.images)
    context = ContextModel.load(args.context) if args.context else None
    results = predict_table(predictor, rows, args.batch_size, args.workers, tta)
    if context:
        results = apply_context(context, rows, results)
    text = (
        submission(results, rows.attrs.get("id_column", "image_name"))
        if args.submission
        else results.drop(columns="logit").to_csv(index=False)
    )
    atomic_write_text(args.out, text)
    if args.explain:
        n = write_explanations(predictor, rows, results, Path(args.explain))
        print(f"wrote {n} Grad-CAM overlays to {args.explain}/")
    if predictor.synthetic:
        print("note: SYNTHETIC demo model (train.py --demo): its outputs say nothing about real skin lesions")
    for note in input_notes(rows, context):
        print(f"note: {note}", file=sys.stderr)
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
