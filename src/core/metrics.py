"""The one metrics module: ROC, AUC, partial AUC, threshold metrics, calibration, bootstrap intervals.

Plain numpy, so that a 1,000-resample bootstrap is fast; tests check every figure against
scikit-learn. At 1.76% melanoma, accuracy is nearly meaningless (all-benign scores 0.982): the
project selects and reports by ROC AUC, partial AUC and sensitivity/specificity.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SENSITIVITY = 0.90  # the operating threshold rule: the highest threshold with at least this sensitivity


def _as_arrays(y, s):
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def has_both_classes(y) -> bool:
    y = np.asarray(y)
    return bool((y == 1).any() and (y == 0).any())


def roc_curve(y, s):
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) at +inf (drop_intermediate=False)."""
    y, s = _as_arrays(y, s)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = last_of_tie + 1 - tps
    pos, neg = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[last_of_tie]]


def roc_auc(y, s) -> float:
    """Area under the ROC curve (ties count half); nan with only one class."""
    if not has_both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def partial_auc(y, s, min_tpr: float = 0.8) -> float:
    """Area under the ROC curve above TPR = min_tpr (ISIC 2024 challenge metric; 0 to 1 - min_tpr).

    Integrates max(tpr - min_tpr, 0) over fpr along the piecewise-linear ROC curve, the same area
    the challenge computes by flipping labels and scores and taking the AUC up to FPR = 1 - min_tpr.
    """
    if not has_both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s)
    f0, f1, t0, t1 = fpr[:-1], fpr[1:], tpr[:-1], tpr[1:]
    width = f1 - f0
    above = np.clip(t0 - min_tpr, 0, None), np.clip(t1 - min_tpr, 0, None)
    both = (t0 >= min_tpr) & (t1 >= min_tpr)
    area = np.where(both, width * (above[0] + above[1]) / 2.0, 0.0)
    crossing = (t0 < min_tpr) & (t1 > min_tpr)
    frac = np.where(crossing, (t1 - min_tpr) / np.where(t1 > t0, t1 - t0, 1.0), 0.0)
    area += np.where(crossing, 0.5 * width * frac * above[1], 0.0)
    return float(area.sum())


def average_precision(y, s) -> float:
    """Step-wise area under precision-recall (sklearn's definition, no interpolation)."""
    if not has_both_classes(y):
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(y, s):
    y, s = _as_arrays(y, s)
    fpr, tpr, thr = roc_curve(y, s)
    tp, fp = tpr[1:] * y.sum(), fpr[1:] * (len(y) - y.sum())
    return tp / np.maximum(tp + fp, 1e-12), tpr[1:], thr[1:]


def at_threshold(y, p, threshold: float) -> dict:
    """Confusion matrix and the figures derived from it, predicting melanoma when p >= threshold."""
    y, p = _as_arrays(y, p)
    pred = p >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))

    def ratio(a, b):
        return a / b if b else math.nan

    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    ppv = ratio(tp, tp + fp)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "ppv": ppv,
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, len(y)),
    }


def sensitivity_at_specificity(y, s, min_spec: float) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    ok = 1.0 - fpr >= min_spec - 1e-12
    return float(tpr[ok].max()) if ok.any() else math.nan


def specificity_at_sensitivity(y, s, min_sens: float) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    ok = tpr >= min_sens - 1e-12
    return float((1.0 - fpr[ok]).max()) if ok.any() else math.nan


def threshold_for_sensitivity(y, p, min_sens: float) -> float:
    """The highest threshold whose sensitivity is at least min_sens (most specific such operating point)."""
    fpr, tpr, thr = roc_curve(y, p)
    ok = np.flatnonzero((tpr >= min_sens - 1e-12) & np.isfinite(thr))
    return float(thr[ok[0]]) if len(ok) else float(np.min(p))


def brier_score(y, p) -> float:
    y, p = _as_arrays(y, p)
    return float(np.mean((p - y) ** 2))


def reliability_bins(y, p, bins: int = 10):
    """(mean probability, observed rate, count) per equal-width bin: the reliability diagram, and ECE."""
    y, p = _as_arrays(y, p)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf = np.bincount(which, weights=p, minlength=bins) / np.maximum(count, 1)
    rate = np.bincount(which, weights=y, minlength=bins) / np.maximum(count, 1)
    return conf, rate, count


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over the reliability bins, weighted by bin size."""
    conf, rate, count = reliability_bins(y, p, bins)
    return float(np.sum(count * np.abs(rate - conf)) / max(count.sum(), 1))


def epoch_metrics(y, p, threshold: float = 0.5) -> dict:
    """What each training epoch reports on the validation set."""
    t = at_threshold(y, p, threshold)
    return {
        "auc": roc_auc(y, p),
        "pauc": partial_auc(y, p),
        "sensitivity": t["sensitivity"],
        "specificity": t["specificity"],
        "accuracy": t["accuracy"],
    }


# ------------------------------------------------------------------------------ confidence intervals
def patient_resamples(groups, n_resamples: int, seed: int):
    """Yield index arrays, each a bootstrap sample of whole patients (all of a drawn patient's images).

    Images of one patient are correlated (same skin, same camera, often the same lesion twice), so
    resampling images would give intervals that are too narrow.
    """
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(starts), len(starts))
        lengths = counts[chosen]
        offsets = np.repeat(starts[chosen] - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
        yield order[np.arange(lengths.sum()) + offsets]


def bootstrap(y, p, groups, metric_fns: dict, n_resamples: int = 1000, seed: int = 0) -> dict:
    """{name: (low, high)}: 95% percentile intervals of each metric over patient resamples."""
    y, p = _as_arrays(y, p)
    values = {name: [] for name in metric_fns}
    for idx in patient_resamples(groups, n_resamples, seed):
        ys, ps = y[idx], p[idx]
        for name, fn in metric_fns.items():
            values[name].append(fn(ys, ps))
    out = {}
    for name, vals in values.items():
        vals = np.asarray(vals, dtype=np.float64)
        vals = vals[np.isfinite(vals)]  # resamples with one class have no AUC
        out[name] = (
            (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))
            if len(vals)
            else (math.nan, math.nan)
        )
    return out


def paired_difference(y, a, b, groups, metric=roc_auc, n_resamples: int = 1000, seed: int = 0):
    """(metric(b) - metric(a), low, high): the 95% interval of the difference between two models'
    scores of the same images, each resample shared by both. Two models' own intervals overlap
    far more often than the paired interval of their difference includes 0."""
    y, a = _as_arrays(y, a)
    _, b = _as_arrays(y, b)
    diffs = np.asarray(
        [metric(y[i], b[i]) - metric(y[i], a[i]) for i in patient_resamples(groups, n_resamples, seed)]
    )
    diffs = diffs[np.isfinite(diffs)]
    low, high = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (math.nan, math.nan)
    return metric(y, b) - metric(y, a), float(low), float(high)


def roc_band(y, p, groups, n_resamples: int = 1000, seed: int = 0, grid_points: int = 101):
    """(fpr grid, low tpr, high tpr): the 95% bootstrap band of the ROC curve."""
    y, p = _as_arrays(y, p)
    grid = np.linspace(0, 1, grid_points)
    curves = []
    for idx in patient_resamples(groups, n_resamples, seed):
        if has_both_classes(y[idx]):
            fpr, tpr, _ = roc_curve(y[idx], p[idx])
            curves.append(np.interp(grid, fpr, tpr))
    curves = np.asarray(curves)
    return grid, np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


# ------------------------------------------------------------------------------------ calibration
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_temperature(logits, y, iterations: int = 200) -> tuple[float, float]:
    """(temperature, bias) minimising the log loss of sigmoid(logit / T + b) on a labelled set.

    A bias term is fitted with the temperature because weighted BCE (pos_weight w) shifts every
    logit by about log(w); a temperature alone can rescale but not shift. Both keep the ranking,
    so AUC is unchanged.
    """
    import torch

    z = torch.tensor(np.asarray(logits, dtype=np.float64))  # a copy: pandas 3 arrays can be read-only
    t = torch.tensor(np.asarray(y, dtype=np.float64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp() + bias, t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp()), float(bias.detach())


def calibrated(logits, temperature: float = 1.0, bias: float = 0.0):
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature + bias)


def fit_operating_point(logits, y, min_sensitivity: float = MIN_SENSITIVITY) -> tuple[float, float, float]:
    """(temperature, bias, threshold): the calibration of these held-out logits and the project's
    threshold rule on the calibrated probabilities (the highest with sensitivity >= min_sensitivity).
    Evaluation, the context stage and fold ensembles all fit theirs this way."""
    temperature, bias = fit_temperature(logits, y)
    threshold = threshold_for_sensitivity(y, calibrated(logits, temperature, bias), min_sensitivity)
    return temperature, bias, threshold


def finite_number(value) -> bool:
    """A real int or float (not a bool), neither NaN nor infinite: what a temperature, bias, threshold
    or any other number read from a checkpoint or a context model must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def operating_metrics(y, p, threshold, groups, n, seed) -> tuple[dict, dict]:
    op = at_threshold(y, p, threshold)
    keys = ("sensitivity", "specificity", "balanced_accuracy", "ppv", "npv", "f1")
    fns = {k: (lambda a, b, k=k: at_threshold(a, b, threshold)[k]) for k in keys}
    return op, bootstrap(y, p, groups, fns, n, seed)


def metric_fns() -> dict:
    """The threshold-free metrics of every report, each f(y, p) -> float: the one list."""
    fns = {"roc_auc": roc_auc, "pauc_tpr80": partial_auc, "average_precision": average_precision}
    for k in (80, 90, 95):
        fns[f"sens_at_spec_{k}"] = lambda y, p, k=k: sensitivity_at_specificity(y, p, k / 100)
        fns[f"spec_at_sens_{k}"] = lambda y, p, k=k: specificity_at_sensitivity(y, p, k / 100)
    fns.update({"brier": brier_score, "ece": expected_calibration_error})
    return fns


REFERRED_SHARES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # rows of the risk-coverage table


def risk_coverage(
    y, p, threshold: float, order, shares=REFERRED_SHARES, at_rule: int | None = None
) -> list[dict]:
    """What is left when the first images of `order` (the referral order) are referred: for each
    referred share, the images kept, their melanomas, and sensitivity, specificity and ROC AUC on
    them at the threshold. at_rule: how many images the saved rule refers (one more row)."""
    y, p = _as_arrays(y, p)
    order = np.asarray(order)
    counts = {}
    for share in shares:  # on a small set two shares can round to one count: the first names it
        counts.setdefault(round(share * len(y)), f"{share:.0%}")
    steps = sorted(counts.items()) + ([(at_rule, "saved rule")] if at_rule is not None else [])
    rows = []
    for referred, label in sorted(steps, key=lambda step: step[0]):  # stable: the rule after its share
        kept = np.ones(len(y), bool)
        kept[order[:referred]] = False
        op = at_threshold(y[kept], p[kept], threshold)
        rows.append(
            {
                "referred": label,
                "referred_share": referred / max(len(y), 1),
                "images": int(kept.sum()),
                "melanoma": int(y[kept].sum()),
                "sensitivity": op["sensitivity"],
                "specificity": op["specificity"],
                "roc_auc": roc_auc(y[kept], p[kept]) if has_both_classes(y[kept]) else math.nan,
            }
        )
    return rows
