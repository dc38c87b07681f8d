"""Evaluation plots (matplotlib, Agg backend: no display needed) and the Markdown report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402 - must follow matplotlib.use
import numpy as np  # noqa: E402 - isort keeps it beside pyplot

from src.core import metrics as M  # noqa: E402 - same block

DPI = 120


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def plot_roc(y, p, band, operating: dict, auc_ci, path: Path) -> str:
    fpr, tpr, _ = M.roc_curve(y, p)
    grid, low, high = band
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2, label="95% band (patient bootstrap)")
    ax.plot(
        fpr,
        tpr,
        color="tab:blue",
        lw=2,
        label=f"ROC, AUC {M.roc_auc(y, p):.3f} [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.axhline(0.8, color="tab:orange", lw=0.8, ls=":", label="TPR 0.8 (pAUC region above)")
    ax.plot(
        1 - operating["specificity"],
        operating["sensitivity"],
        "o",
        color="tab:red",
        ms=8,
        label=f"operating point (threshold {operating['threshold']:.3f})",
    )
    return _finish(
        fig,
        ax,
        path,
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
        "ROC curve",
        "lower right",
        ylim=1.01,
    )


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str, ylim: float) -> str:
    """Labels, unit axes, legend and grid shared by the ROC, precision-recall and reliability plots."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, ylim))
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(y, p, path: Path) -> str:
    precision, recall, _ = M.precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.step(
        np.r_[0, recall], np.r_[1, precision], where="post", lw=2, label=f"AP {M.average_precision(y, p):.3f}"
    )
    ax.axhline(np.mean(y), ls="--", color="grey", lw=1, label=f"prevalence {np.mean(y):.3f}")
    return _finish(
        fig, ax, path, "Recall (sensitivity)", "Precision (PPV)", "Precision-recall", "upper right", ylim=1.01
    )


def plot_reliability(y, p_raw, p_cal, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for p, name, colour in ((p_raw, "before", "tab:orange"), (p_cal, "after", "tab:blue")):
        conf, rate, count = M.reliability_bins(y, p)
        used = count > 0
        ax.plot(
            conf[used],
            rate[used],
            "o-",
            color=colour,
            label=f"{name} calibration (ECE {M.expected_calibration_error(y, p):.3f})",
        )
    return _finish(
        fig,
        ax,
        path,
        "Predicted melanoma probability",
        "Observed melanoma rate",
        "Reliability diagram (10 bins)",
        "upper left",
        ylim=1,
    )


def plot_histograms(y, p, threshold: float, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, color="tab:green", label=f"benign (n={int((y == 0).sum())})")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, color="tab:red", label=f"melanoma (n={int((y == 1).sum())})")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_yscale("log")
    ax.set(
        xlabel="Predicted melanoma probability (calibrated)",
        ylabel="Images (log scale)",
        title="Scores per class",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_risk_coverage(rows: list[dict], path: Path) -> str:
    """Sensitivity, specificity and ROC AUC of the images kept as the referred share grows."""
    rows = [r for r in rows if r["referred"] != "saved rule"]
    share = [100 * r["referred_share"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("roc_auc", "ROC AUC"),
    ):
        ax.plot(share, [np.nan if r[key] is None else r[key] for r in rows], "o-", label=label)
    ax.set_xlabel("images referred (%): not assessable first, then closest to the threshold")
    ax.set_ylabel("on the images kept")
    ax.set_title("Risk-coverage")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_training_curves(history: dict, path: Path) -> str | None:
    epochs = history.get("epochs") or []
    if not epochs:
        return None
    x = [e["epoch"] for e in epochs]

    def get(k):
        return [np.nan if e.get(k) is None else e[k] for e in epochs]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, get("train_loss"), "o-", label="train (training objective, e.g. weighted BCE)")
    a.plot(x, get("val_loss"), "o-", label="validation (plain BCE)")
    a.set(xlabel="Epoch", ylabel="Loss", title="Loss per epoch")
    a.legend()
    b.plot(x, get("val_auc"), "o-", color="tab:blue", label="validation AUC")
    b.plot(
        x,
        [v * 5 if v == v else v for v in get("val_pauc")],
        "s--",
        color="tab:purple",
        label="validation pAUC x 5 (max 1)",
    )
    b.set(xlabel="Epoch", ylabel="AUC", title="Validation AUC per epoch", ylim=(0, 1.01))
    b.legend(loc="lower right")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_xticks(x)
    return _save(fig, path)


def _fmt(value, digits=3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and not np.isfinite(value))
        else f"{value:.{digits}f}"
    )


def _with_ci(report: dict, key: str) -> str:
    value, (low, high) = report["metrics"][key], report["ci95"].get(key, (None, None))
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


METRIC_LABELS = (
    [
        ("roc_auc", "ROC AUC"),
        ("pauc_tpr80", "partial AUC above TPR 0.8 (max 0.2)"),
        ("average_precision", "average precision"),
    ]
    + [(f"sens_at_spec_{k}", f"sensitivity at specificity 0.{k}") for k in ("80", "90", "95")]
    + [(f"spec_at_sens_{k}", f"specificity at sensitivity 0.{k}") for k in ("80", "90", "95")]
    + [("brier", "Brier score (calibrated)"), ("ece", "expected calibration error (calibrated)")]
)


def model_named(report: dict) -> str:
    if report.get("ensemble_members"):
        models = report["ensemble_members"]
        return f"Fold ensemble `{report['checkpoint']}` (the mean of its {models} models' logits)"
    return f"Checkpoint `{report['checkpoint']}` (epoch {report['epoch']})"


def _header(report: dict) -> list[str]:
    s = report["set"]
    lines = [
        f"# Evaluation report: {s['name']}",
        "",
        f"{model_named(report)}, evaluated on {s['description']}: "
        f"{s['images']:,} images, {s['melanoma']:,} melanoma, {s['groups']:,} {s['group_unit']}"
        f"{', 8-way TTA' if report['tta'] else ''}.",
        "",
    ]
    for note in report["notes"]:
        lines += [f"> {note}", ""]
    b = report["bootstrap"]
    return lines + [
        f"95% intervals: percentile bootstrap over {b['unit']} "
        f"({b['resamples']} resamples, seed {b['seed']}).",
        "",
    ]


def _operating(report: dict) -> list[str]:
    op, ci = report["operating_point"], report["ci95_operating"]
    lines = [
        f"## At the operating threshold {op['threshold']:.4f} ({report['threshold_rule']})",
        "",
        "| metric | value [95% CI] |",
        "|---|---|",
    ]
    lines += [
        f"| {k} | {_fmt(op[k])} [{_fmt(ci[k][0])}, {_fmt(ci[k][1])}] |"
        for k in ("sensitivity", "specificity", "balanced_accuracy", "ppv", "npv", "f1")
    ]
    return lines + [
        "",
        "| | predicted melanoma | predicted benign |",
        "|---|---|---|",
        f"| melanoma | {op['tp']} (TP) | {op['fn']} (FN) |",
        f"| benign | {op['fp']} (FP) | {op['tn']} (TN) |",
        "",
        f"Accuracy {_fmt(op['accuracy'])}, against {_fmt(report['all_benign_accuracy'])} for a "
        f"model that calls every lesion benign.",
        "",
    ]


def _calibration_and_subgroups(report: dict) -> list[str]:
    m, c = report["metrics"], report["calibration"]
    lines = [
        "## Calibration",
        "",
        f"Temperature {c['temperature']:.3f}, bias {c['bias']:.3f} ({c['fitted_on']}).",
        "",
        "| | Brier | ECE |",
        "|---|---|---|",
        f"| before | {_fmt(m['brier_raw'])} | {_fmt(m['ece_raw'])} |",
        f"| after | {_fmt(m['brier'])} | {_fmt(m['ece'])} |",
        "",
        "## Subgroups",
        "",
        "| subgroup | images | melanoma | ROC AUC [95% CI] |",
        "|---|---|---|---|",
    ]
    for g in report["subgroups"]:
        auc = (
            "too few cases for an AUC"
            if g["auc"] is None
            else f"{_fmt(g['auc'])} [{_fmt(g['ci95'][0])}, {_fmt(g['ci95'][1])}]"
        )
        lines.append(f"| {g['attribute']}: {g['value']} | {g['images']} | {g['melanoma']} | {auc} |")
    return lines + [""]


def _abstention(report: dict) -> list[str]:
    a = report.get("abstention")
    if not a:
        return []
    if not a["checks"]:
        return ["## Abstention", "", "This model has no quality gate or familiarity check yet "
                "(evaluate the run's own validation split first).", ""]  # fmt: skip
    caught = ", ".join(f"{reason}: {n}" for reason, n in a["not_assessable"].items()) or "none"
    lines = [
        "## Abstention",
        "",
        f"Checks: {', '.join(a['checks'])}. Not assessable: {caught}. Unlike training images: "
        f"{_fmt(100 * a['unlike_training_share'], 1)}% of the set. Referred at the saved rule "
        f"({a['rule']}): {_fmt(100 * a['referred_share_at_rule'], 1)}%.",
        "",
        f"Risk-coverage (referral order: {a['order']}):",
        "",
        "| referred | images kept | melanoma kept | sensitivity | specificity | ROC AUC |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['referred']} ({_fmt(100 * r['referred_share'], 1)}%) | {r['images']} | {r['melanoma']} | "
        f"{_fmt(r['sensitivity'])} | {_fmt(r['specificity'])} | {_fmt(r['roc_auc'])} |"
        for r in a["risk_coverage"]
    ]
    return lines + [""]


def markdown(report: dict) -> str:
    lines = _header(report) + ["| metric | value [95% CI] |", "|---|---|"]
    lines += [f"| {label} | {_with_ci(report, key)} |" for key, label in METRIC_LABELS] + [""]
    lines += _operating(report) + _calibration_and_subgroups(report) + _abstention(report) + ["## Plots", ""]
    lines += [f"![{name}]({file})" for name, file in report["plots"].items() if file]
    copies = report.get("near_copies_of_training")
    if copies:
        lines += [
            "",
            "## Near-copies of training images",
            "",
            "| image | training image | similarity |",
            "|---|---|---|",
        ]
        lines += [f"| {c['image']} | {c['training_image']} | {c['similarity']:.4f} |" for c in copies[:50]]
    return "\n".join(lines) + "\n"


def plot_importance(gains: dict, path: Path, top: int = 20) -> str:
    names, values = list(gains)[:top][::-1], list(gains.values())[:top][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(names) + 1.2))
    ax.barh(names, values, color="tab:blue")
    ax.set_xlabel("total gain (mean over fold models)")
    ax.set_title("Context stage: feature importance")
    return _save(fig, path)


def context_markdown(report: dict) -> str:
    b = report["bootstrap"]
    lines = [
        "# Context stage report",
        "",
        f"{report['images']:,} images, {report['melanoma']:,} melanoma, {report['patients']:,} patients, "
        f"{report['folds']} patient-grouped folds; labels from `{report['metadata']}`.",
        "",
        *[f"> {note}" for note in report["notes"]],
        "",
        f"95% intervals: percentile bootstrap over {b['unit']} "
        f"({b['resamples']} resamples, seed {b['seed']}). "
        f"Threshold: {report['threshold_rule']}.",
        "",
        "| score | ROC AUC [95% CI] | pAUC above TPR 0.8 [95% CI] | sensitivity | specificity |",
        "|---|---|---|---|---|",
    ]
    for stage in report["stages"].values():
        op = stage["operating_point"]
        lines.append(
            f"| {stage['label']} | {_with_ci(stage, 'roc_auc')} | {_with_ci(stage, 'pauc_tpr80')} | "
            f"{_fmt(op['sensitivity'])} | {_fmt(op['specificity'])} |"
        )
    saved = report["stages"][report["saved_stage"]]["label"]
    lines += ["", f"Saved as context_model.json: **{saved}** (the higher out-of-fold ROC AUC)."]
    follow = "used" if report["lesion_follow_up"] else "not used (not every row has a lesion id)"
    return "\n".join(
        lines
        + [
            "",
            f"{report['features']} features; lesion follow-up features {follow}.",
            "",
            f"![feature importance]({report['plots']['importance']})",
            "",
        ]
    )
