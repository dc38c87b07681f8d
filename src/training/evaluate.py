"""Evaluate a checkpoint the way a clinician would ask: metrics with patient-bootstrap 95% intervals,
an operating threshold, calibration, subgroups, and plots.

    python src/training/evaluate.py --checkpoint checkpoints/best.pth
    python src/training/evaluate.py --checkpoint CKPT --metadata CSV --images DIR   # an external labelled set
    python src/training/evaluate.py --checkpoint checkpoints/oof --metadata CSV --images DIR  # oof.py's folds

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
    CheckpointError,
    calibration_tta,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    synthetic_training_data,
)
from src.core.decision import margins, refer_rule, uncertain
from src.core.ensemble import load_members, read_ensemble
from src.core.familiarity import (
    MAX_FIT_IMAGES,
    UNFAMILIAR,
    Familiarity,
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
from src.data.transforms import InputSpec
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


def near_copies_in_runs(runs: list[tuple[dict, Path]], table: pd.DataFrame, out: Path) -> list[dict] | None:
    """near_copies_of_training over the training images of several runs (an ensemble's folds)."""
    found = [near_copies_of_training(ckpt, path, table, out) for ckpt, path in runs]
    if any(copies is None for copies in found):
        return None
    merged = {(c["image"], c["training_image"]): c for copies in found for c in copies}
    return sorted(merged.values(), key=lambda c: -c["similarity"])


def external_set(args, img_size: int) -> tuple[pd.DataFrame, str]:
    images = args.images or str(Path(args.metadata).parent)
    data = load_labeled_images(args.metadata, images, img_size, skip_missing=args.skip_missing)
    left_out = (
        f"; {len(data.missing):,} listed images not in the folder were left out" if data.missing else ""
    )
    return data.table, f"the labelled set {args.metadata} (images in {images}{left_out})"


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


def checked_reasons(pred: dict, gate: dict | None) -> np.ndarray:
    """Why each image of a prediction cannot be assessed ("" where it can): the gate's rule, else
    unlike training images where the prediction has an unfamiliarity above 1."""
    names = np.array(["", *gate] if gate else [""], dtype=object)
    rules = names[np.maximum(pred["rules"], 0)] if gate else np.full(len(pred["logits"]), "", object)
    return reasons_with_familiarity(rules, pred.get("unfamiliarity"))


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
        + (" in standard deviations of the logits behind each answer" if spread is not None else ""),
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


def make_plots(out: Path, y, p_raw, p_cal, groups, cal, report: dict, history: Path | None, args) -> dict:
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
    if history and history.is_file():
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
        "ensemble_members": ckpt.get("ensemble_members"),
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
    ap.add_argument(
        "--checkpoint", required=True, help="a checkpoint, or the folder of oof.py (a fold ensemble)"
    )
    ap.add_argument(
        "--metadata", help="a labelled set in any supported format (default: the run's validation split)"
    )
    ap.add_argument("--images", help="image folder for --metadata (default: the CSV's folder)")
    ap.add_argument(
        "--skip-missing", action="store_true", help="evaluate the listed images that are in the folder"
    )
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
    saved = None if own else ckpt.get("familiarity")  # its distance is computed batch by batch
    distance = Familiarity(saved) if saved else None
    fitting = train_features is not None  # the validation features fit the distance's threshold
    batch, workers = args.batch_size, args.workers
    pred = logits_for_table(model, ckpt, table, batch, workers, args.tta, gate, fitting, distance)
    table, pred, y, unreadable = readable_rows(table, pred)
    familiarity = fitted_familiarity(train_features, pred.get("features")) if own else saved
    if own and familiarity:
        pred["unfamiliarity"] = unfamiliarity(familiarity, pred.pop("features"))
    return table, pred, y, unreadable, {"quality_gate": gate, "familiarity": familiarity}


def evaluate_checkpoint(args) -> dict:
    """Predict, fit (own split) or reuse the calibration, save it into the checkpoint, write the report."""
    ckpt_path = Path(args.checkpoint)
    if ckpt_path.is_dir():
        return evaluate_ensemble(args)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    own = args.metadata is None
    table, description = own_validation_set(ckpt, ckpt_path) if own else external_set(args, ckpt["img_size"])
    args.tta = bool(args.tta) if own else calibration_tta(ckpt, args.tta, ckpt_path)
    table, pred, y, unreadable, checks = scored_with_checks(model, ckpt, ckpt_path, table, args)
    cal = {**calibrate(ckpt, pred["logits"], y, own, args.min_sensitivity), "tta": args.tta, **checks}
    if own:
        save_calibration(ckpt, ckpt_path, cal)  # what prediction, serving and export read
    rule = refer_rule() if own else ckpt.get("refer_rule") or refer_rule()
    scored = {"table": table, "description": description, "pred": pred, "y": y, "unreadable": unreadable}
    history = ckpt_path.parent / "training_history.json"
    return write_evaluation(args, ckpt, [(ckpt, ckpt_path)], scored, cal, rule, history)


def evaluate_ensemble(args) -> dict:
    """The fold ensemble of oof.py (FOLDER/ensemble.json) on a labelled set, scored as predict.py
    scores it, at the calibration and threshold oof.py fitted on its out-of-fold logits."""
    folder = Path(args.checkpoint)
    spec = read_ensemble(folder)
    if not args.metadata:
        raise EvaluationError(
            f"{folder} is a fold ensemble: its calibration and threshold were fitted on the out-of-fold "
            "scores (oof.py's report); evaluate it on a labelled set with --metadata/--images"
        )
    members = ensemble_members(folder, spec)
    args.tta = calibration_tta(spec, args.tta, folder / "ensemble.json")
    table, description = external_set(args, members[0][0]["img_size"])
    table, pred, y, unreadable, checks = scored_ensemble([ckpt for ckpt, _ in members], table, args)
    cal = {**calibrate(spec, pred["logits"], y, False, args.min_sensitivity), "tta": args.tta, **checks}
    scored = {"table": table, "description": description, "pred": pred, "y": y, "unreadable": unreadable}
    about = {**members[0][0], "epoch": None, "ensemble_members": len(members)}  # for the report
    rule = spec.get("refer_rule") or refer_rule()
    return write_evaluation(args, about, members[:2], scored, cal, rule, None)  # 2 folds' training: all


def ensemble_members(folder: Path, spec: dict) -> list[tuple[dict, Path]]:
    """(checkpoint, path) of every member, all read before any is scored."""
    members = load_members(folder, spec, lambda path: (load_checkpoint(path), path))
    if len({InputSpec.of(ckpt) for ckpt, _ in members}) != 1:
        raise CheckpointError(f"{folder}: the members prepare images differently")
    return members


def scored_ensemble(members: list[dict], table: pd.DataFrame, args) -> tuple:
    """scored_with_checks for a fold ensemble, as prediction scores it: the mean of the members'
    logits, their spread over members (and views, with TTA), the first member's quality gate, and
    the mean unfamiliarity of the members with a feature distance. Every checkpoint is read first
    (a bad member fails before any scoring); one network is built and run at a time."""
    gate = next((ckpt["quality_gate"] for ckpt in members if ckpt.get("quality_gate")), None)
    logits, variances, far = [], [], []
    for ckpt in members:
        fitted, model = ckpt.get("familiarity"), model_from_checkpoint(ckpt)
        distance = Familiarity(fitted) if fitted else None
        pred = logits_for_table(
            model, ckpt, table, args.batch_size, args.workers, args.tta, gate, False, distance
        )
        logits.append(pred.pop("logits"))
        variances.append(pred.pop("spread", np.zeros(len(logits[-1]))) ** 2)
        if fitted:
            far.append(pred.pop("unfamiliarity"))
    logits = np.stack(logits)
    pred = {**pred, "logits": logits.mean(axis=0)}
    if len(logits) > 1 or args.tta:  # the standard deviation of all K x V logits, as predict.py's
        pred["spread"] = np.sqrt(np.mean(variances, axis=0) + logits.var(axis=0))
    if far:
        pred["unfamiliarity"] = np.mean(far, axis=0)
    table, pred, y, unreadable = readable_rows(table, pred)
    familiarity = next((ckpt["familiarity"] for ckpt in members if ckpt.get("familiarity")), None)
    return table, pred, y, unreadable, {"quality_gate": gate, "familiarity": familiarity}


def write_evaluation(args, about: dict, runs: list, scored: dict, cal: dict, rule: dict, history) -> dict:
    """report.json, report.md, predictions.csv and the plots of scored images at the calibration
    `cal` (about: the checkpoint, or what stands for an ensemble; runs: whose training images an
    external set is checked against)."""
    table, pred, y = scored["table"], scored["pred"], scored["y"]
    beside = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else beside / "eval" / Path(args.metadata or "").stem
    out.mkdir(parents=True, exist_ok=True)
    logits, reasons = pred["logits"], checked_reasons(pred, cal["quality_gate"])
    report = build_report(args, about, table, scored["description"], logits, y, cal, scored["unreadable"])
    p = M.calibrated(logits, cal["temperature"], cal["bias"])
    checks = checks_of(cal["quality_gate"], cal["familiarity"])
    report["abstention"] = abstention(y, p, cal, reasons, checks, pred.get("spread"), rule)
    if args.metadata:
        report["near_copies_of_training"] = copies = near_copies_in_runs(runs, table, out)
        if copies:
            report["notes"].append(
                f"{len({c['image'] for c in copies})} images of this set have a near-copy among the model's "
                f"training images, so it is not fully external (listed under near_copies_of_training)."
            )
    groups = split_groups(table)
    report["plots"] = make_plots(out, y, M.sigmoid(logits), p, groups, cal, report, history, args)
    spread = pred.get("spread", np.full(len(y), np.nan))  # of the views' (TTA) or folds' logits
    answers = {"image_name": table["image_name"], "target": y, "logit": logits, "probability": p}
    answers["uncertainty"] = spread
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
