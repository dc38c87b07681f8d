"""How far metadata and patient context go without a single image.

    python benchmarks/context.py \\
        --metadata ../shared/isic-real/isic2020_csv/ISIC_2020_Training_GroundTruth_v2.csv
    python benchmarks/context.py --metadata CSV --patients 400 --bootstrap 100   # a quick subsample
    python benchmarks/context.py --metadata CSV --compare-sklearn              # also HistGradientBoosting

Trains the context stage (src/training/context.py) with 5 patient-grouped folds, checks that no fold
shares a patient, and prints per-fold AUCs, the time taken and, last, one line:
    context-only AUC <a> [<lo>, <hi>] pAUC <b> [<lo>, <hi>]
What it measured on the real ISIC 2020 labels, with date and machine: docs/context.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--patients", type=int, default=0, help="use a random subsample of this many patients")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--compare-sklearn", action="store_true")
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
    print(summary_line("context-only", score_summary(y, oof, groups, args.bootstrap, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
