"""Predict melanoma probabilities for new images.

    python src/inference/predict.py --checkpoint CKPT INPUT [--out predictions.csv] [--tta] [--explain DIR]
    python src/inference/predict.py --checkpoint CKPT test-metadata.csv --images test-image.hdf5 \
        --context checkpoints/context/context_model.json --submission --out submission.csv

CKPT is a training checkpoint (.pth) or an export (.onnx, also int8). INPUT is one image, a folder
of images (or one level down), an ISIC 2024 image HDF5 file, or a metadata CSV in any supported
format (labels optional; images from --images, default the CSV's folder). Writes one answer per
image: image_name, probability (calibrated, of melanoma), uncertainty (the spread of the logits of
a fold ensemble's models and of the 8 TTA views; empty for one model without TTA), assessable and
reason (the model's checks: image quality, unlike its training images), decision ("below
threshold", "above threshold" or "refer": not assessable, or those logits, mean +/- one standard
deviation, straddle the threshold), label (1 = at or above the threshold), threshold, stage
(which model gave the answer) and error. Unreadable files, and images the metadata lists but the
folder or HDF5 file lacks, are listed with their error; the rest are still predicted. TTA follows
the calibration.

Scores are kept in OUT.parts/ as they are made and the folder is removed when OUT is written: an
interrupted run resumes when run again, and under torchrun each process scores a share of the
parts (src/inference/archive.py; docs/deployment.md).

--context applies the context stage (src/training/context.py) to a metadata CSV: all lesions of a
patient are scored together, and the answer is the context stage's (probability, decision and label at
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

from src.core import distributed as dist
from src.core.context_model import ContextModel, few_lesions_note
from src.core.decision import decisions
from src.core.familiarity import reasons_with_familiarity
from src.data.atomic import atomic_write_bytes, atomic_write_text, replace_atomically
from src.data.images import HDF5_EXTENSIONS, IMAGE_EXTENSIONS, ImageDecodeError, decode_image, index_images
from src.data.labels import DataError
from src.data.loader import ImageDataset, default_workers, make_loader
from src.data.metadata import invalid_ages_note, read_metadata, split_groups, text
from src.data.transforms import load_input
from src.errors import command
from src.inference.archive import PART_ROWS, Parts, batches_by_part, inputs_digest, score_parts
from src.inference.gradcam import NO_CAM
from src.inference.predictor import Scorer, load_scorer

# One row of predictions.csv (the image model's answer; --context adds its own columns).
ANSWER_COLUMNS = ["image_name", "probability", "uncertainty", "assessable", "reason", "decision", "label"]
ANSWER_COLUMNS += ["threshold", "stage", "error"]


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


def score_rows(
    predictor: Scorer,
    rows: pd.DataFrame,
    parts: Parts,
    todo: list[int],
    batch_size: int,
    workers: int,
    tta: bool,
    rank=0,
    world=1,
) -> None:
    """Score the parts `todo` of `rows` (this process's unfinished ones), saving each part as it is
    done; a row without a score gets its error (file not found, not an image...)."""
    present = rows["path"].notna().to_numpy()
    batches, counts = batches_by_part(parts, todo, present, batch_size)
    paths = rows["path"].where(present, "").tolist()
    gate = predictor.quality_gate
    loader = make_loader(
        ImageDataset(paths, np.zeros(len(rows)), predictor.input, gate),
        batch_size,
        workers=default_workers(workers, dist.local_processes()),
        pin_memory=predictor.kind == "pytorch" and predictor.rt.device.type == "cuda",
        batch_sampler=batches,
    )
    bar = tqdm(loader, total=len(batches), desc=f"predict{f' {rank}' if world > 1 else ''}", unit="batch")
    names = np.array(["", *gate] if gate else [""], dtype=object)  # rule code + 1 -> its name

    def batch_scores(b) -> tuple:
        logits, far = predictor.member_scores(b[0], tta)
        rules = names[np.maximum(b[4].numpy(), 0)] if gate else np.full(len(b[0]), "", dtype=object)
        return b[2].numpy(), logits, b[3].numpy(), reasons_with_familiarity(rules, far)

    def save(k: int, logits: np.ndarray, ok: np.ndarray, reasons: np.ndarray) -> None:
        where = rows["path"].iloc[parts.rows_of(k)]
        errors = ["" if good else error_for(p) for p, good in zip(where, ok, strict=True)]
        parts.write(k, logits, errors, list(reasons))

    score_parts(map(batch_scores, bar), parts, todo, counts, predictor.rows_per_image(tta), save)


def results_table(
    predictor: Scorer, names: pd.Series, member_logits: np.ndarray, errors, reasons
) -> pd.DataFrame:
    """One answer per image from its logits ((K models x V views, N); NaN and an error where there
    are none): the mean logit's calibrated probability, the spread of those logits (their standard
    deviation, in logit units) as its uncertainty (empty for one model without TTA), and whether
    the model's checks found it assessable, with the reason when not (both empty without checks)."""
    out = pd.DataFrame({"image_name": names.to_numpy(), "error": np.asarray(errors, object)})
    scored = out["error"].to_numpy() == ""
    logits = member_logits.mean(axis=0)
    out["probability"] = np.where(scored, predictor.probabilities(np.where(scored, logits, 0.0)), np.nan)
    spread = member_logits.std(axis=0) if len(member_logits) > 1 else np.full(len(out), np.nan)
    out["uncertainty"] = np.where(scored, spread, np.nan)
    checked = scored & bool(predictor.checks())
    out["assessable"] = np.where(checked, np.where(np.asarray(reasons) == "", "true", "false"), "")
    out["reason"] = np.where(checked, reasons, "")
    out["logit"] = np.where(scored, logits, np.nan)
    unsure = predictor.uncertain(out["probability"].fillna(0.0).to_numpy(), spread)
    out = with_decisions(out, predictor.threshold, "image", unsure)
    return out[[*ANSWER_COLUMNS, "logit"]]


def with_decisions(out: pd.DataFrame, threshold: float, stage: str, unsure=False) -> pd.DataFrame:
    """decision, label, threshold and stage of each scored row (src/core/decision.py): refer where
    it is not assessable or `unsure`; empty where the row has no score."""
    scored = out["probability"].notna().to_numpy()
    p = out["probability"].fillna(0.0).to_numpy()
    found = decisions(p, threshold, out["assessable"].to_numpy() != "false", unsure)
    out["decision"] = np.where(scored, found, "")
    out["label"] = np.where(scored, (p >= threshold).astype(int).astype(str), "")
    out["threshold"], out["stage"] = threshold, stage
    return out


def apply_context(model: ContextModel, rows: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The context stage over all rows at once, so each patient's lesions are compared together."""
    if "patient_id" not in rows:
        raise DataError("--context needs metadata (patient, age, sex, site): give a metadata CSV as INPUT")
    scored = model.score(rows, results["logit"].to_numpy() if model.uses_image_score else None)
    out = results.assign(image_probability=results["probability"])
    failed = (out["error"] != "").to_numpy() if model.uses_image_score else np.zeros(len(out), bool)
    out["probability"] = np.where(failed, np.nan, scored["probability"])
    out = with_decisions(out, model.threshold, "context")
    out["patient_rank"] = np.where(failed, np.nan, scored["patient_rank"])
    lesions = pd.Series(split_groups(rows)).groupby(split_groups(rows)).transform("size").to_numpy()
    notes = {n: few_lesions_note(int(n)) for n in np.unique(lesions)}  # one string per count, shared
    out["context_note"] = [notes[n] for n in lesions]
    columns = ["image_name", "probability", "decision", "label", "threshold", "stage", "image_probability"]
    return out[
        [*columns, "uncertainty", "assessable", "reason", "patient_rank", "context_note", "error", "logit"]
    ]


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
    missing = results["probability"].isna()
    if missing.any():
        shown = ", ".join(results.loc[missing, "image_name"].head(5))
        raise DataError(f"{int(missing.sum())} images have no score ({shown}); a submission needs every row")
    named = {"image_name": id_column, "probability": "target"}
    return results[["image_name", "probability"]].rename(columns=named).to_csv(index=False)


def write_explanations(predictor: Scorer, rows: pd.DataFrame, results: pd.DataFrame, folder: Path) -> int:
    from src.inference.gradcam import grad_cam, overlay_png

    if predictor.kind != "pytorch":
        raise DataError("--explain needs a PyTorch checkpoint (.pth): Grad-CAM uses gradients")
    done = 0
    for name, path, error in tqdm(
        list(zip(rows["image_name"], rows["path"], results["error"], strict=True)), desc="grad-cam"
    ):
        if not error:
            image = load_input(path, predictor.input)
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
    ap.add_argument(
        "--part-rows",
        type=int,
        default=PART_ROWS,
        help="rows per part kept in OUT.parts/ while predicting (what an interruption can cost)",
    )
    args = ap.parse_args(argv)
    if args.part_rows < 1 or args.batch_size < 1:
        ap.error("--part-rows and --batch-size must be at least 1")
    return args


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, local_rank = dist.setup()  # torchrun: each process scores every world-th part
    try:
        return predict(args, rank, world, local_rank)
    finally:
        dist.cleanup()


def predict(args, rank: int, world: int, local_rank: int) -> int:
    predictor = load_scorer(args.checkpoint, local_rank=local_rank)
    tta = predictor.views(args.tta)
    if args.explain and predictor.kind != "pytorch":  # before any work, not after the CSV
        raise DataError("--explain needs a PyTorch checkpoint (.pth): Grad-CAM uses gradients")
    if args.explain and predictor.model.cam_layer() is None:
        raise DataError(f"--explain: {NO_CAM}")
    rows = list_inputs(args.input, args.images)
    context = ContextModel.load(args.context) if args.context else None
    parts = open_parts(args, predictor, rows, tta, rank)
    todo = parts.todo(rank, world)  # every world-th part, less those a former run finished
    done = len(range(rank, parts.count, world)) - len(todo)
    if done:
        share = f" (process {rank} of {world})" if world > 1 else ""
        print(f"resuming{share}: {done} of {done + len(todo)} parts already scored in {parts.folder}/")
    try:
        score_rows(predictor, rows, parts, todo, args.batch_size, args.workers, tta, rank, world)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished parts are kept in {parts.folder}/; the same command resumes",
            file=sys.stderr,
        )
        return 130
    dist.barrier()  # every part is written
    if rank != 0:
        return 0
    counts = write_results(args, predictor, rows, parts, context)
    parts.remove()
    report(args, predictor, rows, counts, context)
    return 0


def open_parts(args, predictor: Scorer, rows: pd.DataFrame, tta: bool, rank: int) -> Parts:
    """OUT.parts/ of this prediction: new, or an interrupted run's to resume (src/inference/archive.py)."""
    what = {
        "model": predictor.version,
        "inputs": inputs_digest(rows),
        "tta": tta,
        "batch_size": args.batch_size,
        "quality_gate": predictor.quality_gate,
        "unfamiliar_at": predictor.unfamiliar_at,
    }
    parts = Parts(args.out, what, len(rows), args.part_rows)
    if rank == 0:
        parts.open(rank)
    dist.barrier()  # rank 0 made the folder
    if rank != 0:
        parts.open(rank)
    return parts


def write_results(args, predictor, rows, parts: Parts, context) -> tuple[int, int]:
    """Write the output; (rows, rows without a score). The context stage, a submission and
    --explain need every row at once; a plain prediction is written part by part."""
    if not (context or args.submission or args.explain):
        return write_by_part(args.out, predictor, rows, parts)
    logits, errors, reasons = parts.all_scores()
    results = results_table(predictor, rows["image_name"], logits, errors, reasons)
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
    return len(results), int((results["error"] != "").sum())


def write_by_part(out, predictor: Scorer, rows: pd.DataFrame, parts: Parts) -> tuple[int, int]:
    """The CSV one part at a time, so that memory holds one part's answers, not the archive's."""
    counts = [0, 0]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for k in range(parts.count):
                scores = parts.read(k) or parts.all_scores()  # all_scores names what is missing
                part = results_table(predictor, rows["image_name"].iloc[parts.rows_of(k)], *scores)
                part.drop(columns="logit").to_csv(f, index=False, header=k == 0)
                counts[0] += len(part)
                counts[1] += int((part["error"] != "").sum())

    replace_atomically(out, write)
    return counts[0], counts[1]


def report(args, predictor: Scorer, rows: pd.DataFrame, counts: tuple[int, int], context) -> None:
    if predictor.synthetic:
        print("note: SYNTHETIC demo model (train.py --demo): its outputs say nothing about real skin lesions")
    for note in input_notes(rows, context):
        print(f"note: {note}", file=sys.stderr)
    total, bad = counts
    print(f"{total - bad} images predicted, {bad} unreadable (listed with their error) -> {args.out}")
    if predictor.calibrated_on is None:
        print(
            "note: this model has no fitted threshold/calibration yet (threshold 0.5); run "
            "src/training/evaluate.py on its checkpoint first",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
