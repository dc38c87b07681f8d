"""Every metric against scikit-learn and the ISIC 2024 partial-AUC formula: random, tied, separable scores."""

import numpy as np
import pytest
from sklearn import metrics as sk

from src.core import metrics as m


def isic2024_pauc(y, s, min_tpr=0.8):
    """The ISIC 2024 challenge's published scoring formula, written out with scikit-learn."""
    v_gt, v_pred, max_fpr = np.abs(np.asarray(y) - 1), -np.asarray(s, float), 1 - min_tpr
    fpr, tpr, _ = sk.roc_curve(v_gt, v_pred)
    stop = np.searchsorted(fpr, max_fpr, "right")
    tpr = np.append(tpr[:stop], np.interp(max_fpr, [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]))
    fpr = np.append(fpr[:stop], max_fpr)
    return sk.auc(fpr, tpr)


def cases():
    rng = np.random.default_rng(0)
    for i in range(40):
        n = int(rng.integers(10, 400))
        y = (rng.random(n) < rng.uniform(0.02, 0.5)).astype(int)
        y[:2] = [0, 1]
        kind = ("random", "tied", "separable", "inverted")[i % 4]
        s = {
            "random": rng.random(n),
            "tied": np.round(rng.random(n), 1),
            "separable": y + 0.5 * rng.random(n),
            "inverted": 1 - y + 0.3 * rng.random(n),
        }[kind]
        yield pytest.param(y, s, id=f"{kind}-{i}")


@pytest.mark.parametrize("y,s", list(cases()))
def test_against_sklearn(y, s):
    assert m.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert m.partial_auc(y, s) == pytest.approx(isic2024_pauc(y, s), abs=1e-12)
    assert m.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = m.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    t = float(np.median(s))
    ours = m.at_threshold(y, s, t)
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (ours["tn"], ours["fp"], ours["fn"], ours["tp"]) == (tn, fp, fn, tp)
    assert ours["sensitivity"] == pytest.approx(sk.recall_score(y, pred))
    assert ours["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert ours["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    p = np.clip(s / max(s.max(), 1e-9), 0, 1)
    assert m.brier_score(y, p) == pytest.approx(sk.brier_score_loss(y, p))


def test_partial_auc_range_and_extremes():
    y = np.array([0, 0, 1, 1])
    assert m.partial_auc(y, [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.2)
    assert m.partial_auc(y, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(0.0)
    assert np.isnan(m.roc_auc([1, 1], [0.2, 0.3])) and np.isnan(m.partial_auc([0, 0], [0.2, 0.3]))


def test_operating_points():
    y = np.array([0] * 8 + [1] * 2)
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.95, 0.8, 0.9])
    assert m.sensitivity_at_specificity(y, s, 0.875) == 1.0  # one false positive allowed
    assert m.sensitivity_at_specificity(y, s, 1.0) == 0.0  # 0.95 benign outranks every melanoma
    assert m.specificity_at_sensitivity(y, s, 1.0) == 0.875
    thr = m.threshold_for_sensitivity(y, s, 0.9)
    assert thr == 0.8 and m.at_threshold(y, s, thr)["sensitivity"] == 1.0


def test_calibration_error_of_perfectly_calibrated_bins():
    y = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)
    p = np.array([0.3] * 10 + [0.8] * 10)
    assert m.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    assert m.expected_calibration_error(y, 1 - p) > 0.3
