"""How far metadata and patient context go without a single image.

    python benchmarks/context.py \\
        --metadata ../shared/isic-real/isic2020_csv/ISIC_2020_Training_GroundTruth_v2.csv
    python benchmarks/context.py --metadata CSV --patients 400 --bootstrap 100   # a quick subsample
    python benchmarks/context.py --metadata CSV --compare-sklearn              # also HistGradientBoosting
    python benchmarks/context.py --metadata CSV --per-request 1,2,4,8          # requests of k lesions

Trains the context stage (src/training/context.py) with 5 patient-grouped folds, checks that no fold
shares a patient, and prints per-fold AUCs, the time taken and, last, one line:
    context-only AUC <a> [<lo>, <hi>] pAUC <b> [<lo>, <hi>]
With --per-request, each held-out patient's images are also scored as the service would score
them when sent k at a time: the images are shuffled and cut into requests of k, the patient
features are computed within each request only, and each image is scored by the fold model that
never saw its patient. One line per k, then the same for all of the patient's images.
What it measured on the real ISIC 2020 labels, with date and machine: docs/context.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from src.core import metrics as M
from src.data.metadata import read_metadata, split_groups
from src.data.splits import assign_folds
from src.training.context import score_summary, summary_line, train_context


def subsample(table, patients: int, seed: int):
    groups = split_groups(table)
    keep = np.random.default_rng(seed).permutation(np.unique(groups))[:patients]
    return table[np.isin(groups, keep)].reset_index(drop=True)


def sklearn_margins(model, table, folds, seed: int) -> np.ndarray:
    """The same features (the model's) and folds through scikit-learn's HistGradientBoosting."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = model.features_for(table).to_numpy()
    y, out = table["target"].to_numpy(), np.zeros(len(table))
    for k in np.unique(folds):
        model = HistGradientBoostingClassifier(
            learning_rate=0.03, max_iter=300, max_leaf_nodes=7, l2_regularization=5.0, random_state=seed
        )
        model.fit(x[folds != k], y[folds != k])
        out[folds == k] = model.decision_function(x[folds == k])
    return out


def as_requests(table, k: int, seed: int):
    """The table with each patient's images cut, in a random order, into requests of k images: a
    request is a patient of its own, as the service sees it."""
    groups = split_groups(table)
    order = np.random.default_rng(seed).permutation(len(table))
    position = pd.Series(np.arange(len(table))).groupby(groups[order]).cumcount().to_numpy()
    request = np.empty(len(table), np.int64)
    request[order] = position // k
    return table.assign(patient_id=[f"{g}#{r}" for g, r in zip(groups, request, strict=True)], lesion_id="")


def per_request(model, table, folds, sizes, n_resamples: int, seed: int) -> None:
    y, groups = table["target"].to_numpy(), split_groups(table)
    for k in sizes:
        x = model.features_for(as_requests(table, k, seed)).to_numpy(np.float64)
        margins = np.zeros(len(table))
        for fold, booster in zip(np.unique(folds), model.boosters, strict=True):
            margins[folds == fold] = booster.raw_score(x[folds == fold])
        print(summary_line(f"{k} per request", score_summary(y, margins, groups, n_resamples, seed)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--patients", type=int, default=0, help="use a random subsample of this many patients")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--compare-sklearn", action="store_true")
    ap.add_argument("--per-request", default="", help="comma-separated k: also score requests of k images")
    args = ap.parse_args(argv)
    table = read_metadata(args.metadata).table
    if args.patients:
        table = subsample(table, args.patients, args.seed)
    folds = assign_folds(table, args.folds, args.seed, split_groups(table))
    start = time.perf_counter()
    model, oof = train_context(table, folds)  # raises if a patient is in two folds
    seconds = time.perf_counter() - start
    y, groups = table["target"].to_numpy(), split_groups(table)
    per_fold = [M.roc_auc(y[folds == k], oof[folds == k]) for k in range(args.folds)]
    print(
        f"{len(table):,} images, {int(y.sum()):,} melanoma, {len(set(groups)):,} patients; "
        f"{len(model.features)} features; trained {args.folds} fold models in {seconds:.1f} s"
    )
    print("per-fold AUC: " + ", ".join(f"{a:.4f}" for a in per_fold))
    if args.compare_sklearn:
        start = time.perf_counter()
        other = sklearn_margins(model, table, folds, args.seed)
        print(
            summary_line(
                "sklearn HistGradientBoosting", score_summary(y, other, groups, args.bootstrap, args.seed)
            )
            + f" ({time.perf_counter() - start:.1f} s)"
        )
    if args.per_request:
        sizes = [int(k) for k in args.per_request.split(",")]
        per_request(model, table, folds, sizes, args.bootstrap, args.seed)
    print(summary_line("context-only", score_summary(y, oof, groups, args.bootstrap, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
