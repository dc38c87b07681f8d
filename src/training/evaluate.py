"""Evaluate a checkpoint the way a clinician would ask: metrics with patient-bootstrap 95% intervals,
an operating threshold, calibration, subgroups, and plots.

    python src/training/evaluate.py --checkpoint checkpoints/best.pth
    python src/training/evaluate.py --checkpoint CKPT --metadata CSV --images DIR   # an external labelled set

Without --metadata it evaluates the run's own validation split (split.csv beside the checkpoint),
fits the calibration (temperature and bias) and the operating threshold there (default: the highest
threshold with sensitivity >= 0.90), and saves them into the checkpoint, where prediction and
serving read them. With --metadata it evaluates any labelled set in a supported format, using the
saved threshold and calibration (never refitting them on a test set).
Writes report.json, report.md, predictions.csv and PNG plots to eval/ beside the checkpoint.
How long it takes: docs/performance.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import metrics as M
from src.core.checkpoint import (
    calibration_tta,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    synthetic_training_data,
)
from src.core.decision import margins, refer_rule, uncertain
from src.core.familiarity import (
    MAX_FIT_IMAGES,
    UNFAMILIAR,
    fit_familiarity,
    reasons_with_familiarity,
    unfamiliarity,
)
from src.core.metrics import MIN_SENSITIVITY, metric_fns, operating_metrics
from src.core.run_data import RunDataError, own_validation_set, run_images
from src.core.runtime import logits_for_table
from src.data.atomic import atomic_write_json, atomic_write_text
from src.data.dedup import fingerprints, near_pairs
from src.data.labels import DataError, load_labeled_images
from src.data.metadata import group_kinds, split_groups, text
from src.data.quality import fit_gate_on_files
from src.data.splits import SplitError
from src.errors import ProjectError, command
from src.training import report as R

AGE_BANDS = [(0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+")]
MIN_CASES_FOR_AUC = 5  # per class: fewer melanomas (or benign) than this make an AUC meaningless


class EvaluationError(ProjectError):
    pass


def near_copies_of_training(ckpt: dict, ckpt_path: Path, table: pd.DataFrame, out: Path) -> list[dict] | None:
    """Images of an external set with a near-copy among the model's training images (an external
    set that overlaps training is not external); None when the training images cannot be found."""
    try:
        train, _ = run_images(ckpt, ckpt_path, "train")
    except (RunDataError, SplitError, DataError):
        return None
    cache = ckpt["config"].get("CACHE_DIR")
    store = cache if cache and Path(cache).is_dir() else ckpt_path.parent
    pairs = near_pairs(
        fingerprints(table["path"], out, progress=False), fingerprints(train["path"], store, progress=False)
    )
    pairs = pairs.sort_values("similarity", ascending=False)
    return [
        {"image": table["image_name"].iloc[i], "training_image": train["image_name"].iloc[j], "similarity": s}
        for i, j, s in zip(pairs["i"], pairs["j"], pairs["similarity"], strict=True)
    ]


def external_set(metadata: str, images: str | None, img_size: int) -> tuple[pd.DataFrame, str]:
    images = images or str(Path(metadata).parent)
    data = load_labeled_images(metadata, images, img_size)
    return data.table, f"the labelled set {metadata} (images in {images})"


UNKNOWN = "unknown"  # a missing age, sex or site is a subgroup of its own, reported like the others


def subgroup_values(table: pd.DataFrame) -> dict[str, np.ndarray]:
    bands = pd.cut(
        table["age_approx"], [b[0] for b in AGE_BANDS] + [200], right=False, labels=[b[2] for b in AGE_BANDS]
    ).astype(object)
    columns = {
        "sex": text(table["sex"]),
        "anatomic site": text(table["anatom_site"]),
        "age band": text(bands),
    }
    if "skin_type" in table and (text(table["skin_type"]) != "").any():  # newer ISIC Archive metadata
        columns["Fitzpatrick skin type"] = text(table["skin_type"]).str.upper()
    return {name: values.replace("", UNKNOWN).to_numpy() for name, values in columns.items()}


def subgroups(table: pd.DataFrame, y, p, groups, n, seed) -> list[dict]:
    out = []
    for attribute, values in subgroup_values(table).items():
        for value in sorted(set(values), key=lambda v: (v == UNKNOWN, v)):  # "unknown" last
            mask = values == value
            ys, ps = y[mask], p[mask]
            enough = min(int(ys.sum()), int((ys == 0).sum())) >= MIN_CASES_FOR_AUC
            ci = (
                M.bootstrap(ys, ps, groups[mask], {"auc": M.roc_auc}, n, seed)["auc"]
                if enough
                else (None, None)
            )
            out.append(
                {
                    "attribute": attribute,
                    "value": value,
                    "images": int(mask.sum()),
                    "melanoma": int(ys.sum()),
                    "auc": M.roc_auc(ys, ps) if enough else None,
                    "ci95": ci,
                }
            )
    return out


def calibrate(ckpt: dict, logits, y, own_split: bool, min_sensitivity: float) -> dict:
    """Fit on the run's validation split; on any other set, reuse what the checkpoint holds."""
    if own_split:
        temperature, bias, threshold = M.fit_operating_point(logits, y, min_sensitivity)
        return {
            "temperature": temperature,
            "bias": bias,
            "threshold": threshold,
            "rule": f"highest threshold with sensitivity >= {min_sensitivity:.2f} on the validation split",
            "fitted_on": "fitted on this validation split",
        }
    fitted = ckpt.get("calibrated_on")
    return {
        "temperature": ckpt.get("temperature", 1.0),
        "bias": ckpt.get("logit_bias", 0.0),
        "threshold": ckpt.get("threshold", 0.5),
        "rule": ckpt.get("threshold_rule", "default 0.5"),
        "fitted_on": f"from the checkpoint, fitted on {fitted}"
        if fitted
        else "none fitted yet: evaluate the run's validation split first",
    }


def training_checks(
    model, ckpt: dict, ckpt_path: Path, batch_size: int, workers: int, seed: int = 0
) -> tuple[dict | None, np.ndarray | None]:
    """The image-quality gate (src/data/quality.py) fitted on the run's training images, decoded as
    the model sees them, and the pooled features of up to MAX_FIT_IMAGES of them (for the
    familiarity distance); (None, None) when they cannot be found (the checkpoint keeps no checks)."""
    try:
        train, _ = run_images(ckpt, ckpt_path, "train")
    except (RunDataError, SplitError, DataError):
        return None, None
    try:
        gate = fit_gate_on_files(train["path"], ckpt["img_size"], max(workers, 0))
    except ValueError:
        gate = None
    sample = train.sample(n=min(MAX_FIT_IMAGES, len(train)), random_state=seed)
    pred = logits_for_table(model, ckpt, sample, batch_size, workers, False, features=True)
    return gate, pred["features"][pred["ok"].astype(bool)]


def checked_reasons(pred: dict, gate: dict | None, familiarity: dict | None) -> np.ndarray:
    """Why each image of a prediction cannot be assessed ("" where it can)."""
    names = np.array(["", *gate] if gate else [""], dtype=object)
    rules = names[np.maximum(pred["rules"], 0)] if gate else np.full(len(pred["logits"]), "", object)
    far = unfamiliarity(familiarity, pred["features"]) if familiarity else None
    return reasons_with_familiarity(rules, far)


def fitted_familiarity(train_features: np.ndarray | None, validation_features) -> dict | None:
    """The familiarity distance (src/core/familiarity.py) on the training features, its threshold on
    the validation split's; None without training features or with too few images."""
    if train_features is None:
        return None
    try:
        return fit_familiarity(train_features, validation_features)
    except ValueError:
        return None


def checks_of(quality_gate: dict | None, familiarity: dict | None) -> list[str]:
    return (["image quality"] if quality_gate else []) + (["unlike training images"] if familiarity else [])


def abstention(y, p, cal: dict, reasons: np.ndarray, checks: list[str], spread, rule: dict) -> dict:
    """The report's abstention section: what each check caught, and the risk-coverage table. The
    saved rule refers what cannot be assessed and, with TTA, where the views' logits (spread)
    straddle the threshold, as prediction does; beyond those the order is the distance to the
    threshold (in the views' standard deviations with TTA, else in logit units)."""
    threshold, assessable = cal["threshold"], reasons == ""
    unsure = uncertain(p, threshold, spread, cal["temperature"], rule)
    distance = margins(p, threshold) if spread is None else margins(p, threshold, spread, cal["temperature"])
    order = np.lexsort((distance, ~unsure, assessable))  # not assessable first, then the unsure
    referred = int((~assessable | unsure).sum())
    caught = pd.Series(reasons[~assessable]).value_counts()
    return {
        "checks": checks,
        "not_assessable": {str(k): int(v) for k, v in caught.items()},
        "unlike_training_share": float((reasons == UNFAMILIAR).mean()),
        "rule": rule["text"],
        "referred_share_at_rule": referred / len(y),
        "order": "not assessable, then closest to the threshold"
        + (" in standard deviations of the 8 views' logits" if spread is not None else ""),
        "risk_coverage": M.risk_coverage(y, p, threshold, order, at_rule=referred),
    }


def save_calibration(ckpt: dict, path: Path, cal: dict) -> None:
    """Write the fitted calibration into the checkpoint: threshold, temperature, logit_bias,
    threshold_rule, calibrated_on and calibrated_at. The weights are untouched, so the model_version
    that prediction and serving report (a hash of the weights) stays the same."""
    ckpt.update(
        {
            "threshold": cal["threshold"],
            "temperature": cal["temperature"],
            "logit_bias": cal["bias"],
            "threshold_rule": cal["rule"],
            "calibrated_on": "the run's validation split",
            "calibration_tta": cal["tta"],  # prediction must average the same views
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "refer_rule": refer_rule(),
            **{k: cal[k] for k in ("quality_gate", "familiarity") if cal.get(k)},
        }
    )
    save_checkpoint(ckpt, path)


def make_plots(out: Path, y, p_raw, p_cal, groups, cal, report: dict, ckpt_path: Path, args) -> dict:
    band = M.roc_band(y, p_cal, groups, min(args.bootstrap, 500), args.seed)
    op, auc_ci = report["operating_point"], report["ci95"]["roc_auc"]
    plots = {
        "ROC curve": R.plot_roc(y, p_cal, band, op, auc_ci, out / "roc.png"),
        "Precision-recall": R.plot_pr(y, p_cal, out / "precision_recall.png"),
        "Reliability diagram": R.plot_reliability(y, p_raw, p_cal, out / "reliability.png"),
        "Score histograms": R.plot_histograms(y, p_cal, cal["threshold"], out / "score_histograms.png"),
        "Risk-coverage": R.plot_risk_coverage(
            report["abstention"]["risk_coverage"], out / "risk_coverage.png"
        ),
    }
    history = ckpt_path.parent / "training_history.json"
    if history.is_file():
        import json

        plots["Training curves"] = R.plot_training_curves(
            json.loads(history.read_text()), out / "training_curves.png"
        )
    return plots


def clean(obj):
    """JSON-safe: numpy scalars to Python, nan/inf to None."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def check_set(table: pd.DataFrame, y) -> None:
    if len(y) == 0:
        raise EvaluationError("the evaluation set is empty (no readable labelled images)")
    if not M.has_both_classes(y):
        only = "melanoma" if y[0] == 1 else "benign"
        raise EvaluationError(
            f"the evaluation set has only {only} images ({len(y)}); ROC AUC, sensitivity and "
            f"specificity need both melanoma and benign cases"
        )


def readable_rows(table: pd.DataFrame, pred: dict) -> tuple[pd.DataFrame, dict, np.ndarray, int]:
    """(rows that decoded, the prediction's arrays for them, their labels, how many did not decode)."""
    ok = pred["ok"].astype(bool)
    rows = table.iloc[pred["index"][ok]].reset_index(drop=True)
    y = rows["target"].to_numpy().astype(int)
    check_set(rows, y)
    return rows, {k: v[ok] for k, v in pred.items()}, y, int((~ok).sum())


def build_report(
    args, ckpt: dict, table: pd.DataFrame, description: str, logits, y, cal: dict, unreadable: int
) -> dict:
    """Every figure of the report, from labels, logits and the calibration; writes nothing."""
    own = args.metadata is None
    groups = split_groups(table)
    unit = "patients" if set(group_kinds(table)) == {"patient"} else "patients, else lesions, else images"
    p_raw, p = M.sigmoid(logits), M.calibrated(logits, cal["temperature"], cal["bias"])
    metrics = {name: fn(y, p) for name, fn in metric_fns().items()}
    metrics["brier_raw"], metrics["ece_raw"] = M.brier_score(y, p_raw), M.expected_calibration_error(y, p_raw)
    op, ci_op = operating_metrics(y, p, cal["threshold"], groups, args.bootstrap, args.seed)
    notes = [f"{unreadable} unreadable images were left out."] if unreadable else []
    if own:
        notes.append(
            "Threshold and calibration were fitted on this same validation split, so the figures at the "
            "operating point are optimistic; confirm them on an external set (--metadata/--images)."
        )
    synthetic = synthetic_training_data(ckpt)
    if synthetic:
        notes.append(
            "SYNTHETIC demo model (train.py --demo): these figures say nothing about real skin lesions."
        )
    return {
        "checkpoint": args.checkpoint,
        "epoch": ckpt.get("epoch"),
        "synthetic_training_data": synthetic,
        "tta": args.tta,
        "notes": notes,
        "set": {
            "name": "validation split" if own else Path(args.metadata).name,
            "description": description,
            "images": len(y),
            "melanoma": int(y.sum()),
            "groups": int(len(set(groups))),
            "group_unit": unit,
        },
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "unit": unit},
        "metrics": metrics,
        "ci95": M.bootstrap(y, p, groups, metric_fns(), args.bootstrap, args.seed),
        "threshold_rule": cal["rule"],
        "operating_point": op,
        "ci95_operating": ci_op,
        "all_benign_accuracy": float(1 - y.mean()),
        "calibration": {k: cal[k] for k in ("temperature", "bias", "fitted_on")},
        "subgroups": subgroups(table, y, p, groups, args.bootstrap, args.seed),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate a melanoma checkpoint.")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument(
        "--metadata", help="a labelled set in any supported format (default: the run's validation split)"
    )
    ap.add_argument("--images", help="image folder for --metadata (default: the CSV's folder)")
    ap.add_argument("--out", help="output folder (default: eval/ beside the checkpoint)")
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average the 8 flips/transposes (on the run's split: calibrate for it; on another set: "
        "default and only choice is what the calibration was fitted with)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--workers",
        type=int,
        default=-1,
        help="data loading processes (-1: three quarters of the cores, at most 12)",
    )
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the 95%% intervals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--min-sensitivity",
        type=float,
        default=MIN_SENSITIVITY,
        help="threshold rule: sensitivity at least this",
    )
    return ap.parse_args(argv)


def scored_with_checks(model, ckpt: dict, ckpt_path: Path, table: pd.DataFrame, args) -> tuple:
    """(readable rows, their prediction arrays, labels, unreadable count, the checks): on the run's
    own split the checks are fitted (quality on training images, the feature distance's threshold on
    this split), on any other set they are the checkpoint's."""
    own = args.metadata is None
    gate, train_features = (
        training_checks(model, ckpt, ckpt_path, args.batch_size, args.workers, args.seed)
        if own
        else (ckpt.get("quality_gate"), None)
    )
    features = train_features is not None or ckpt.get("familiarity") is not None
    pred = logits_for_table(model, ckpt, table, args.batch_size, args.workers, args.tta, gate, features)
    table, pred, y, unreadable = readable_rows(table, pred)
    familiarity = fitted_familiarity(train_features, pred.get("features")) if own else ckpt.get("familiarity")
    return table, pred, y, unreadable, {"quality_gate": gate, "familiarity": familiarity}


def evaluate_checkpoint(args) -> dict:
    """Predict, fit (own split) or reuse the calibration, save it into the checkpoint, write the report."""
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    table, description = (
        external_set(args.metadata, args.images, ckpt["img_size"])
        if args.metadata
        else own_validation_set(ckpt, ckpt_path)
    )
    out = (
        Path(args.out)
        if args.out
        else ckpt_path.parent / "eval" / (Path(args.metadata).stem if args.metadata else "")
    )
    out.mkdir(parents=True, exist_ok=True)
    args.tta = bool(args.tta) if args.metadata is None else calibration_tta(ckpt, args.tta, ckpt_path)
    own = args.metadata is None
    table, pred, y, unreadable, checks = scored_with_checks(model, ckpt, ckpt_path, table, args)
    logits = pred["logits"]
    cal = {**calibrate(ckpt, logits, y, own, args.min_sensitivity), "tta": args.tta, **checks}
    if own:
        save_calibration(ckpt, ckpt_path, cal)  # what prediction, serving and export read
    report = build_report(args, ckpt, table, description, logits, y, cal, unreadable)
    reasons = checked_reasons(pred, checks["quality_gate"], checks["familiarity"])
    p = M.calibrated(logits, cal["temperature"], cal["bias"])
    rule = refer_rule() if own else ckpt.get("refer_rule") or refer_rule()
    report["abstention"] = abstention(y, p, cal, reasons, checks_of(**checks), pred.get("spread"), rule)
    if args.metadata:
        report["near_copies_of_training"] = copies = near_copies_of_training(ckpt, ckpt_path, table, out)
        if copies:
            report["notes"].append(
                f"{len({c['image'] for c in copies})} images of this set have a near-copy among the model's "
                f"training images, so it is not fully external (listed under near_copies_of_training)."
            )
    report["plots"] = make_plots(
        out, y, M.sigmoid(logits), p, split_groups(table), cal, report, ckpt_path, args
    )
    answers = {"image_name": table["image_name"], "target": y, "logit": logits, "probability": p}
    pd.DataFrame({**answers, "assessable": reasons == "", "reason": reasons}).to_csv(
        out / "predictions.csv", index=False
    )
    report = clean(report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", R.markdown(report))
    return {**report, "out": str(out)}


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    report = evaluate_checkpoint(args)
    m, ci, op = report["metrics"], report["ci95"], report["operating_point"]
    print(
        f"{report['set']['images']} images, {report['set']['melanoma']} melanoma: ROC AUC {m['roc_auc']:.4f} "
        f"[{ci['roc_auc'][0]:.4f}, {ci['roc_auc'][1]:.4f}], pAUC {m['pauc_tpr80']:.4f}; at threshold "
        f"{op['threshold']:.4f}: sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f}"
    )
    print(f"report: {report['out']}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
