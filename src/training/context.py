"""The context stage: gradient-boosted trees on metadata, the patient's other lesions and the image score.

    python src/training/context.py --metadata CSV                        # metadata only, no images
    python src/training/context.py --metadata CSV --oof checkpoints/oof/oof.csv   # fused with the image model

Trains LightGBM with the same patient-grouped folds as the image model (the folds in oof.csv; without
it, 5 folds grouped by patient), so every image is scored by trees that never saw its patient. Writes to
--out (default checkpoints/context/): context_model.json (LightGBM's text models in JSON, read back
and evaluated by src/core/trees.py, never by LightGBM), oof.csv, report.json, report.md and
feature_importance.png. With --oof, the report puts image-only, context-only and fused side by side.
What it reaches on the real ISIC 2020 labels without images: docs/context.md (benchmarks/context.py).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import metrics as M
from src.core.context_model import ContextError, ContextModel
from src.core.metrics import MIN_SENSITIVITY, metric_fns, operating_metrics
from src.core.trees import Forest
from src.data.atomic import atomic_write_json, atomic_write_text
from src.data.metadata import (
    MALIGNANT_POLICIES,
    MetadataError,
    measurement_columns,
    read_metadata,
    split_groups,
    text,
)
from src.data.patient_context import has_lesion_ids
from src.data.splits import SplitError, assign_folds
from src.errors import command

# Fixed, not tuned per run: shallow trees, slow learning, strong regularisation. A leaf must hold
# enough melanomas to mean anything, so its minimum size follows the number of positives.
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.01,
    "num_leaves": 7,
    "lambda_l2": 5.0,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "verbosity": -1,
    "num_threads": 0,
}
ROUNDS = 600


def fit_boosters(x: pd.DataFrame, y: np.ndarray, folds: np.ndarray):
    """Out-of-fold margins and the K boosters: booster k never sees fold k (nor its patients)."""
    import lightgbm as lgb

    oof, boosters = np.zeros(len(y)), []
    for k in np.unique(folds):
        train, held_out = folds != k, folds == k
        params = {**PARAMS, "min_data_in_leaf": int(np.clip(y[train].sum() // 5, 5, 100)), "seed": int(k)}
        data = lgb.Dataset(
            x[train].to_numpy(np.float64),
            y[train],
            feature_name=list(x.columns),
            categorical_feature=["site"],
            free_raw_data=True,
        )
        booster = lgb.train(params, data, num_boost_round=ROUNDS)
        oof[held_out] = booster.predict(x[held_out].to_numpy(np.float64), raw_score=True)
        boosters.append(booster)
    return oof, boosters


def train_context(
    table: pd.DataFrame, folds: np.ndarray, image_logit=None
) -> tuple[ContextModel, np.ndarray]:
    """Fit the stage on labelled rows; returns the model and every row's out-of-fold margin."""
    check_folds(table, folds)
    y = table["target"].to_numpy().astype(int)
    sites = sorted(set(text(table["anatom_site"]).str.lower()) - {""})
    model = ContextModel(
        [], [], sites, measurement_columns(table.columns), has_lesion_ids(table), image_logit is not None
    )
    x = model.features_for(table, image_logit)  # drops the labels first
    oof, boosters = fit_boosters(x, y, folds)
    model.boosters = [Forest.parse(b.model_to_string()) for b in boosters]  # scored as a loaded file is
    model.features = list(x.columns)
    model.temperature, model.bias, model.threshold = M.fit_operating_point(oof, y)
    return model, oof


def check_folds(table: pd.DataFrame, folds: np.ndarray) -> None:
    """No patient (split group) in two folds, and both classes in every training part."""
    groups = pd.Series(split_groups(table))
    spread = groups.groupby(np.asarray(folds)).unique().explode()
    if spread.duplicated().any():
        raise SplitError(f"{int(spread.duplicated().sum())} patients appear in more than one fold")
    y = table["target"].to_numpy()
    for k in np.unique(folds):
        if len(np.unique(y[folds != k])) < 2:
            raise ContextError(f"training folds without fold {k} hold only one class")


# ------------------------------------------------------------------------------------------- report
STAGES = {"image": "image only", "context": "context only (metadata + patient)", "fused": "fused"}


def score_summary(y, margins, groups, n_resamples: int, seed: int) -> dict:
    """The evaluation's headline figures for one score: AUC and pAUC with patient-bootstrap
    intervals, and sensitivity/specificity at a threshold fitted by the same rule as evaluate.py."""
    temperature, bias, threshold = M.fit_operating_point(margins, y)
    p = M.calibrated(margins, temperature, bias)
    fns = {k: metric_fns()[k] for k in ("roc_auc", "pauc_tpr80", "average_precision")}
    op, ci_op = operating_metrics(y, p, threshold, groups, n_resamples, seed)
    return {
        "metrics": {k: fn(y, p) for k, fn in fns.items()},
        "ci95": M.bootstrap(y, p, groups, fns, n_resamples, seed),
        "threshold": threshold,
        "operating_point": {k: op[k] for k in ("sensitivity", "specificity")},
        "ci95_operating": {k: ci_op[k] for k in ("sensitivity", "specificity")},
    }


def importance(model: ContextModel) -> dict[str, float]:
    """Total gain of each feature, averaged over the fold models, largest first."""
    gains = np.mean([b.importance() for b in model.boosters], axis=0)
    order = np.argsort(-gains)
    return {model.features[i]: float(gains[i]) for i in order}


def build_context_report(table, folds, scores: dict, model: ContextModel, source: str, n, seed) -> dict:
    y, groups = table["target"].to_numpy().astype(int), split_groups(table)
    return {
        "metadata": source,
        "images": len(y),
        "melanoma": int(y.sum()),
        "patients": int(len(set(groups))),
        "folds": int(len(np.unique(folds))),
        "bootstrap": {"resamples": n, "seed": seed, "unit": "patients"},
        "threshold_rule": f"highest threshold with sensitivity >= {MIN_SENSITIVITY:.2f} out of fold",
        "stages": {
            name: score_summary(y, m, groups, n, seed) | {"label": STAGES[name]} for name, m in scores.items()
        },
        "features": len(model.features),
        "lesion_follow_up": model.lesion_features,
        "importance": dict(list(importance(model).items())[:30]),
        "notes": [
            "Every score is out-of-fold: the trees (and, with --oof, the image model) never saw the "
            "patient they score. Thresholds and calibration are fitted on these same out-of-fold scores."
        ],
    }


# ---------------------------------------------------------------------------------------------- CLI
def load_inputs(args) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, str]:
    """The labelled table, its folds, and the out-of-fold image logits when --oof is given."""
    try:
        table = read_metadata(args.metadata.split(","), args.malignant_non_melanoma).table
    except MetadataError as e:
        raise ContextError(str(e)) from None
    if not args.oof:
        folds = assign_folds(table, args.folds, args.seed, split_groups(table))
        return table, folds, None, f"{args.folds} folds grouped by patient (seed {args.seed})"
    oof = read_oof(args.oof)
    table = table.merge(oof, on="image_name", how="inner", suffixes=("", "_oof"))
    if table.empty:
        raise ContextError(f"no image of {args.oof} is listed in {args.metadata}")
    if (table["target"] != table["target_oof"]).any():
        raise ContextError(
            f"labels in {args.oof} differ from {args.metadata} for "
            f"{int((table['target'] != table['target_oof']).sum())} images (another MALIGNANT_NON_MELANOMA?)"
        )
    logits = table.pop("logit").to_numpy(dtype=float)
    folds = table.pop("fold").to_numpy()
    table = table.drop(columns=["target_oof", "probability"])
    return table, folds, logits, f"the image model's folds from {args.oof}"


OOF_COLUMNS = ["image_name", "fold", "target", "logit", "probability"]


def read_oof(path) -> pd.DataFrame:
    try:
        oof = pd.read_csv(path, dtype={"image_name": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ContextError(f"cannot read {path}: {e}") from None
    missing = [c for c in OOF_COLUMNS if c not in oof.columns]
    if missing:
        raise ContextError(f"{path} lacks columns {missing} (expected {', '.join(OOF_COLUMNS)})")
    if oof["logit"].isna().any():
        raise ContextError(f"{path}: {int(oof['logit'].isna().sum())} images have no score")
    return oof[OOF_COLUMNS]


def run_context(args) -> dict:
    table, folds, logits, fold_source = load_inputs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores, models = {}, {}
    if logits is not None:
        scores["image"] = logits
    models["context"], scores["context"] = train_context(table, folds)
    if logits is not None:
        models["fused"], scores["fused"] = train_context(table, folds, logits)
    chosen = better_stage(table["target"].to_numpy(), scores)
    final = models[chosen]
    final.info = {
        "stage": STAGES[chosen],
        "out_of_fold_auc": {STAGES[k]: float(M.roc_auc(table["target"], v)) for k, v in scores.items()},
        "trained_on": args.metadata,
        "images": len(table),
        "folds": fold_source,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    final.save(out / "context_model.json")
    return finish(args, out, table, folds, scores, final, chosen)


def better_stage(y, scores: dict) -> str:
    """The model to keep: fused, unless context-only scored a higher out-of-fold AUC (then the image
    score only added noise, and the fused trees would be the worse model)."""
    if "fused" in scores and M.roc_auc(y, scores["fused"]) >= M.roc_auc(y, scores["context"]):
        return "fused"
    return "context"


def finish(args, out: Path, table, folds, scores: dict, final: ContextModel, chosen: str) -> dict:
    """oof.csv of the final stage, the report (JSON and Markdown) and the feature-importance plot."""
    from src.training import report as R

    last = chosen
    oof = pd.DataFrame(
        {
            "image_name": table["image_name"],
            "fold": folds,
            "target": table["target"],
            "logit": scores[last],
            "probability": M.calibrated(scores[last], final.temperature, final.bias),
        }
    )
    atomic_write_text(out / "oof.csv", oof.to_csv(index=False))
    report = build_context_report(table, folds, scores, final, args.metadata, args.bootstrap, args.seed)
    report["saved_stage"] = chosen
    report["plots"] = {"importance": R.plot_importance(report["importance"], out / "feature_importance.png")}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", R.context_markdown(report))
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train the context stage (metadata, patient, image score).")
    ap.add_argument("--metadata", required=True, help="labelled metadata in any supported format")
    ap.add_argument("--oof", help="oof.csv from src/training/oof.py: fuse the out-of-fold image scores")
    ap.add_argument("--out", default="checkpoints/context")
    ap.add_argument("--folds", type=int, default=5, help="patient-grouped folds when --oof is not given")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--malignant-non-melanoma", default="negative", choices=MALIGNANT_POLICIES)
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the 95%% intervals")
    return ap.parse_args(argv)


def summary_line(name: str, stage: dict) -> str:
    m, ci = stage["metrics"], stage["ci95"]
    return (
        f"{name} AUC {m['roc_auc']:.4f} [{ci['roc_auc'][0]:.4f}, {ci['roc_auc'][1]:.4f}] "
        f"pAUC {m['pauc_tpr80']:.4f} [{ci['pauc_tpr80'][0]:.4f}, {ci['pauc_tpr80'][1]:.4f}]"
    )


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_context(args)
    print(f"{report['images']:,} images, {report['melanoma']:,} melanoma, {report['patients']:,} patients")
    for name, stage in report["stages"].items():
        print(summary_line(f"{name}-only" if name != "fused" else name, stage))
    saved = report["saved_stage"]
    if saved == "context" and "fused" in report["stages"]:
        print("note: fused scored below context-only out of fold, so the context-only model was saved")
    print(f"saved {STAGES[saved]}: {args.out}/context_model.json   report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
