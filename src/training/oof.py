"""Out-of-fold image scores: train (or collect) all K folds, score each image with the one model that
did not train on it, and write oof.csv for the context stage.

    python src/training/oof.py --out checkpoints/oof --folds 5 [--NAME=value ...]   # train.py settings
    python src/training/oof.py --out checkpoints/oof --folds 3 --demo

Fold k trains in OUT/fold{k}/ with train.py's settings plus NUM_FOLDS=K, FOLD=k; a fold whose run has
finished is collected, not retrained (--retrain to redo it). Every fold run must share one split (same
data, SEED and NUM_FOLDS: checked), so each image is in exactly one validation fold. Writes
OUT/oof.csv: image_name, fold, target, logit, probability. Stacking on in-fold scores would leak: the
image model has seen those images. Also writes OUT/ensemble.json (src/core/ensemble.py): the K fold
models as one, calibrated on their out-of-fold logits, for predict.py --checkpoint OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import metrics as M
from src.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from src.core.ensemble import FILE as ENSEMBLE_FILE
from src.core.ensemble import write_ensemble
from src.core.run_data import run_images
from src.core.runtime import logits_for_table
from src.data.atomic import atomic_write_text
from src.data.splits import read_split
from src.errors import ProjectError, command
from src.training import train as T
from src.training.context import OOF_COLUMNS
from src.training.evaluate import fitted_familiarity, training_checks


class OOFError(ProjectError):
    pass


def finished_checkpoint(fold_dir: Path) -> Path | None:
    """The best checkpoint of a run that ran all its epochs, else None."""
    history = fold_dir / "training_history.json"
    if not history.is_file():
        return None
    h = json.loads(history.read_text())
    done = len(h.get("epochs", [])) >= h.get("config", {}).get("NUM_EPOCHS", 1 << 30)
    best = fold_dir / str(h.get("best_checkpoint"))
    return best if done and best.is_file() else None


def train_fold(k: int, folds: int, out: Path, overrides: list[str], retrain: bool) -> Path:
    fold_dir = out / f"fold{k}"
    best = None if retrain else finished_checkpoint(fold_dir)
    if best:
        print(f"fold {k}: collecting the finished run {best}", flush=True)
        return best
    print(f"fold {k}/{folds}: training in {fold_dir}/", flush=True)
    argv = [*overrides, f"--NUM_FOLDS={folds}", f"--FOLD={k}", f"--CHECKPOINT_DIR={fold_dir}"]
    if retrain or (fold_dir / "last.pth").is_file():
        argv.append("--OVERWRITE=True")  # an unfinished or unwanted run of this fold
    rc = T.main(argv)
    best = finished_checkpoint(fold_dir)
    if rc != 0 or best is None:
        raise OOFError(f"fold {k} did not finish (train.py exit {rc}); see the messages above")
    return best


def member_file(best: Path) -> Path:
    """The fold's file that ensemble.json names: best.pth where the run wrote one."""
    return best.parent / "best.pth" if (best.parent / "best.pth").is_file() else best


def save_checks(ckpt: dict, path: Path, checks: dict) -> None:
    """The fold model's checks (image quality, unlike its training images: fitted on its own split,
    as evaluate.py does), so that the ensemble can say when it cannot assess an image."""
    ckpt.update({k: v for k, v in checks.items() if v is not None})
    save_checkpoint(ckpt, path)


def score_fold(k: int, best: Path, args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fold's validation images scored by its own model, and the fold's split file."""
    ckpt = load_checkpoint(best)
    table, split_path = run_images(ckpt, best, "val")
    split = read_split(split_path)
    train_names = set(split.loc[split["split"] == "train", "image_name"])
    if train_names & set(table["image_name"]):
        raise OOFError(f"{split_path}: images in both the training and validation parts")
    model = model_from_checkpoint(ckpt)
    gate, train_features = training_checks(model, ckpt, best, args.batch_size, args.workers)
    pred = logits_for_table(
        model, ckpt, table, args.batch_size, args.workers, args.tta, gate, train_features is not None
    )
    ok = pred["ok"].astype(bool)
    familiarity = fitted_familiarity(train_features, pred.get("features", np.zeros(0))[ok])
    save_checks(ckpt, member_file(best), {"quality_gate": gate, "familiarity": familiarity})
    if not ok.all():
        print(f"warning: fold {k}: {int((~ok).sum())} unreadable validation images left out", file=sys.stderr)
    rows = table.iloc[pred["index"][ok]]
    logits = pred["logits"][ok]
    scored = pd.DataFrame(
        {
            "image_name": rows["image_name"].to_numpy(),
            "fold": k,
            "target": rows["target"].to_numpy().astype(int),
            "logit": logits,
            "probability": M.calibrated(logits, ckpt.get("temperature", 1.0), ckpt.get("logit_bias", 0.0)),
        }
    )
    return scored, split


def check_one_split(splits: list[pd.DataFrame]) -> None:
    """All fold runs must agree on every image's fold: else an image could be validated by one
    model and trained on by another, and the scores would not be out-of-fold."""
    first = splits[0].set_index("image_name")["fold"]
    for k, split in enumerate(splits[1:], start=1):
        other = split.set_index("image_name")["fold"]
        if not (len(other) == len(first) and other.reindex(first.index).equals(first)):
            raise OOFError(
                f"fold {k} was trained on another split than fold 0 (other data, SEED or NUM_FOLDS?); "
                f"retrain it with --retrain"
            )
    for k, split in enumerate(splits):
        val_folds = set(split.loc[split["split"] == "val", "fold"])
        if val_folds != {k}:
            raise OOFError(f"the run for fold {k} validated on fold(s) {sorted(val_folds)}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Out-of-fold image scores for the context stage; other --NAME=value go to train.py."
    )
    ap.add_argument("--out", default="checkpoints/oof")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--retrain", action="store_true", help="retrain folds that already finished")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=-1, help="data loading processes for scoring")
    ap.add_argument("--tta", action="store_true", help="average the 8 flips/transposes")
    args, overrides = ap.parse_known_args(argv)
    bad = [a for a in overrides if not (a == "--demo" or (a.startswith("--") and "=" in a))]
    if bad:
        ap.error(f"train.py settings are written --NAME=value; not understood: {' '.join(bad)}")
    if args.folds < 2:
        ap.error(f"--folds must be at least 2, not {args.folds}")
    return args, overrides


@command
def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    out = Path(args.out)
    bests = [train_fold(k, args.folds, out, overrides, args.retrain) for k in range(args.folds)]
    parts = [score_fold(k, best, args) for k, best in enumerate(bests)]
    check_one_split([split for _, split in parts])
    oof = pd.concat([scored for scored, _ in parts], ignore_index=True)[OOF_COLUMNS]
    atomic_write_text(out / "oof.csv", oof.to_csv(index=False))
    y = oof["target"].to_numpy()
    auc = M.roc_auc(y, oof["logit"].to_numpy()) if M.has_both_classes(y) else float("nan")
    print(
        f"{len(oof):,} images scored out of fold by {args.folds} models: AUC {auc:.4f} -> {out / 'oof.csv'}"
    )
    if M.has_both_classes(y):
        write_ensemble(out, [member_file(b) for b in bests], oof["logit"].to_numpy(), y, args.tta)
        print(f"the {args.folds} fold models as one: predict.py --checkpoint {out} ({out / ENSEMBLE_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
