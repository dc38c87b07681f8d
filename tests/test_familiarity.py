"""The "unlike training images" distance (src/core/familiarity.py) and the refer decision
(src/core/decision.py): fitting, flagging, hostile checkpoint entries, the risk-coverage table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.core import metrics as M
from src.core.checkpoint import CheckpointError, check_settings
from src.core.decision import REFER, answer, decisions, margins, refer_rule, uncertain
from src.core.familiarity import UNFAMILIAR, fit_familiarity, reasons_with_familiarity, unfamiliarity
from src.core.model import MelanomaNet

SETTINGS = {"arch": "resnet18", "img_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3}


def features(n: int, seed: int, d: int = 512, shift: float = 0.0) -> np.ndarray:
    """Correlated features with a few strong directions, as a network's pooled features have."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(16, d))
    return rng.normal(size=(n, 16)) @ basis * 2 + rng.normal(size=(n, d)) * 0.3 + shift


def test_the_threshold_flags_the_asked_share_of_validation_and_far_images():
    fitted = fit_familiarity(features(2000, 0), features(1000, 1), share=0.015)
    flagged = (unfamiliarity(fitted, features(1000, 1)) > 1).mean()
    assert flagged == pytest.approx(0.015, abs=0.002)  # the quantile of that very split
    fresh = (unfamiliarity(fitted, features(4000, 2)) > 1).mean()
    assert fresh < 0.05  # new images of the same kind are rarely flagged
    off = features(200, 3, shift=1.5)  # every feature moved: off the training directions
    assert (unfamiliarity(fitted, off) > 1).all()
    basis = np.random.default_rng(99).normal(size=(16, 512))
    along = features(200, 4) + np.full(16, 2 * 10.0) @ basis  # 10 sd along each main direction
    assert (unfamiliarity(fitted, along) > 1).all()


def test_the_model_gives_the_logit_and_the_features_the_head_reads():
    torch.manual_seed(0)
    model = MelanomaNet("resnet18").eval()
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        logits, pooled = model.logits_and_features(x)
        assert torch.equal(logits, model(x)) and pooled.shape == (3, 512)
        assert torch.allclose(model.backbone.fc(pooled).squeeze(1), logits)


def test_a_checkpoint_entry_that_is_not_a_fitted_distance_is_refused():
    good = fit_familiarity(features(200, 0), features(50, 1))
    check_settings({**SETTINGS, "familiarity": good}, "x.pth")
    bad_entries = {
        "a string": "far",
        "missing keys": {"mean": good["mean"]},
        "wrong feature size": {**good, "mean": torch.zeros(2048)},
        "components of another size": {**good, "components": good["components"][:, :100]},
        "NaN": {**good, "variances": good["variances"] * float("nan")},
        "zero variance": {**good, "variances": good["variances"] * 0},
        "negative threshold": {**good, "threshold": -1.0},
        "text for numbers": {**good, "mean": ["a"] * 512},
    }
    for name, bad in bad_entries.items():
        with pytest.raises(CheckpointError, match="familiarity"):
            check_settings({**SETTINGS, "familiarity": bad}, "x.pth")
        assert name


def test_too_few_images_to_fit_say_so():
    with pytest.raises(ValueError, match="too few"):
        fit_familiarity(features(5, 0), features(5, 1))


def test_the_reason_is_the_quality_gates_first_then_unlike_training_images():
    reasons = reasons_with_familiarity(["", "blurred", "", ""], np.array([0.5, 3.0, 1.2, 1.0]))
    assert list(reasons) == ["", "blurred", UNFAMILIAR, ""]
    assert list(reasons_with_familiarity(["", "blurred"], None)) == ["", "blurred"]


def test_refer_when_not_assessable_or_when_the_band_straddles_the_threshold():
    rule = refer_rule(1.0)
    p = M.sigmoid(np.array([0.5, 0.5, 3.0, -3.0]))  # threshold 0.5: logit 0
    spread = np.array([1.0, 0.2, 1.0, np.nan])  # the first straddles, the second does not
    unsure = uncertain(p, 0.5, spread, 1.0, rule)
    assert list(unsure) == [True, False, False, False]
    assert list(uncertain(p, 0.5, spread * 2, 2.0, rule)) == list(unsure)  # calibration's temperature
    assert not uncertain(p, 0.5, None, 1.0, rule).any()  # one model: no band
    found = decisions(p, 0.5, [True, True, True, False], unsure)
    assert list(found) == [REFER, "above threshold", "above threshold", REFER]
    one = answer(0.9, 0.5, "image", assessable=False)
    assert one["decision"] == REFER and one["label"] == 1 and one["probability"] == 0.9
    assert list(margins(p, 0.5)[:3]) == pytest.approx([0.5, 0.5, 3.0])


def test_risk_coverage_refers_the_first_of_the_order_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    order = np.argsort(np.abs(p - 0.5))  # closest to the threshold first
    rows = M.risk_coverage(y, p, 0.5, order, at_rule=30)
    labels = [r["referred"] for r in rows]
    assert labels[0] == "0%" and "saved rule" in labels
    assert rows[0]["images"] == 400 and rows[0]["roc_auc"] == pytest.approx(M.roc_auc(y, p))
    rule = rows[labels.index("saved rule")]
    kept = np.setdiff1d(np.arange(400), order[:30])
    assert rule["images"] == 370 and rule["sensitivity"] == pytest.approx(
        M.at_threshold(y[kept], p[kept], 0.5)["sensitivity"]
    )
    half = rows[labels.index("50%")]
    assert half["images"] == 200 and half["specificity"] >= rows[0]["specificity"]  # the unsure went first


@pytest.mark.slow
def test_an_export_carries_the_distance_and_flags_what_its_checkpoint_flags(trained_run, demo_dir, tmp_path):
    import shutil

    from src.data.transforms import load_input
    from src.inference.predictor import load_scorer

    from helpers import run_script

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("eval"))
    best = run / trained_run[1].name
    assert (
        run_script(
            "src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 10, "--workers", 0
        ).returncode
        == 0
    )
    r = run_script("src/inference/export.py", "--checkpoint", best, "--out", tmp_path / "m.onnx", "--int8")
    assert r.returncode == 0, r.stderr
    torch_model, onnx_model = load_scorer(best), load_scorer(tmp_path / "m.onnx")
    assert (
        onnx_model.checks() == torch_model.checks() and onnx_model.unfamiliar_at == torch_model.unfamiliar_at
    )
    images = sorted(demo_dir.glob("*.jpg"))[:8]
    x = torch.stack([load_input(str(p), torch_model.input) for p in images])
    blocks = torch.from_numpy(np.kron(np.random.default_rng(0).integers(0, 256, (4, 4, 3), np.uint8),
                                      np.ones((8, 8, 1), np.uint8))).permute(2, 0, 1)  # fmt: skip
    x = torch.cat([x, blocks[None]])
    (_, near), (_, exported) = torch_model.scores(x), onnx_model.scores(x)
    np.testing.assert_allclose(exported, near, rtol=0, atol=1e-4)
    assert near[-1] > 1 and exported[-1] > 1  # the colour blocks: unlike training images in both
    int8 = load_scorer(tmp_path / "m_int8.onnx")
    assert int8.scores(x)[1][-1] > 1


def test_the_distance_computed_batch_by_batch_is_the_one_from_all_features(tmp_path):
    """Evaluation of a large set keeps N distances, not N x D features: the same numbers."""
    import pandas as pd

    from src.core.familiarity import Familiarity
    from src.core.runtime import logits_for_table

    from helpers import write_jpeg

    torch.manual_seed(0)
    model = MelanomaNet(SETTINGS["arch"], SETTINGS["mean"], SETTINGS["std"], SETTINGS["img_size"]).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.jpg")
        write_jpeg(paths[-1], rng.integers(0, 255, (80, 96, 3), dtype=np.uint8))
    table = pd.DataFrame({"path": list(map(str, paths)), "target": [0, 1] * 6})
    fitted = fit_familiarity(features(600, 1), features(200, 2))
    pred = logits_for_table(model, SETTINGS, table, 5, 0, False, None, True, Familiarity(fitted))
    assert pred["unfamiliarity"].shape == (12,) and pred["features"].shape == (12, 512)
    np.testing.assert_allclose(pred["unfamiliarity"], unfamiliarity(fitted, pred["features"]), rtol=1e-5)
    alone = logits_for_table(model, SETTINGS, table, 5, 0, False, None, False, Familiarity(fitted))
    assert "features" not in alone
    np.testing.assert_allclose(alone["unfamiliarity"], pred["unfamiliarity"], rtol=1e-5)
    np.testing.assert_allclose(alone["logits"], pred["logits"], rtol=1e-5, atol=1e-6)
