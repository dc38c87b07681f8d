"""oof.csv is out-of-fold by construction: each image is scored by the one fold model whose training
split excluded it, and fold runs that disagree on the split are refused."""

import json
import shutil

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from src.core import metrics as M
from src.core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from src.data.splits import read_split, split_digest
from src.data.transforms import load_input
from src.inference.predictor import Ensemble, Predictor
from src.training.oof import OOFError, check_one_split

from helpers import run_script, start_service, stop_service, tiny_train_args


@pytest.fixture(scope="module")
def oof_run(demo_dir, tmp_path_factory):
    """oof.py on the demo fixture: 3 folds of one epoch; (folder, train.py overrides)."""
    out = tmp_path_factory.mktemp("oof") / "oof"
    overrides = [
        a for a in tiny_train_args(demo_dir, "unused", 1)[1:] if not a.startswith("--CHECKPOINT_DIR")
    ]
    r = run_script("src/training/oof.py", f"--out={out}", "--folds=3", "--workers=0", *overrides)
    assert r.returncode == 0, r.stderr
    return out, overrides


@pytest.mark.slow
def test_every_score_comes_from_the_model_that_never_trained_on_it(oof_run, demo_dir):
    out, overrides = oof_run
    oof = pd.read_csv(out / "oof.csv", dtype={"image_name": str})
    assert list(oof.columns) == ["image_name", "fold", "target", "logit", "probability"]
    assert len(oof) == 80 and oof["image_name"].is_unique  # every image once
    for k in range(3):
        run = out / f"fold{k}"
        split = read_split(run / "split.csv")
        trained_on = set(split.loc[split["split"] == "train", "image_name"])
        scored = oof[oof["fold"] == k]
        assert not trained_on & set(scored["image_name"])
        assert set(scored["image_name"]) == set(split.loc[split["split"] == "val", "image_name"])
        best = next(run.glob("best_model_epoch*.pth"))
        ckpt = load_checkpoint(best)
        assert ckpt["split_sha256"] == split_digest(run / "split.csv")
        # The logit really is fold k's model's: re-score two images with it.
        model = model_from_checkpoint(ckpt).eval()
        for _, row in scored.head(2).iterrows():
            x = load_input(str(demo_dir / f"{row['image_name']}.jpg"), ckpt["img_size"])
            with torch.no_grad():
                assert model(x[None]).item() == pytest.approx(row["logit"], abs=1e-4)
    # A second call collects the finished folds instead of training them again.
    again = run_script("src/training/oof.py", f"--out={out}", "--folds=3", "--workers=0", *overrides)
    assert again.returncode == 0 and again.stdout.count("collecting the finished run") == 3


def test_fold_runs_on_different_splits_are_refused():
    a = pd.DataFrame({"image_name": ["x", "y", "z"], "fold": [0, 1, 1], "split": ["val", "train", "train"]})
    b = a.assign(split=["train", "val", "val"])
    check_one_split([a, b])
    moved = b.assign(fold=[0, 1, 0])  # z validated by model 0 in one run, trained on in the other
    with pytest.raises(OOFError, match="another split"):
        check_one_split([a, moved])
    with pytest.raises(OOFError, match="validated on fold"):
        check_one_split([b, a])


@pytest.mark.slow
def test_the_folder_of_oof_py_predicts_as_one_model_the_mean_of_its_folds(oof_run, demo_dir, tmp_path):
    out, _ = oof_run
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["members"] == ["fold0/best.pth", "fold1/best.pth", "fold2/best.pth"]
    ensemble, members = Ensemble(out), [Predictor(out / m) for m in spec["members"]]
    names = sorted(p.stem for p in demo_dir.glob("*.jpg"))[:6]
    x = torch.stack([load_input(str(demo_dir / f"{n}.jpg"), ensemble.img_size) for n in names])
    each = np.stack([m.logits(x) for m in members])
    np.testing.assert_allclose(ensemble.member_logits(x), each, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ensemble.logits(x), each.mean(axis=0), rtol=0, atol=1e-6)
    r = run_script(
        "src/inference/predict.py", "--checkpoint", out, demo_dir, "--out", tmp_path / "p.csv", "--workers", 0
    )
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(tmp_path / "p.csv").set_index("image_name").loc[names]
    mean = each.mean(axis=0)
    expected = M.calibrated(mean, spec["temperature"], spec["logit_bias"])
    np.testing.assert_allclose(p["probability"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(p["uncertainty"], each.std(axis=0), rtol=0, atol=1e-5)
    assert (p["threshold"] == spec["threshold"]).all() and p["uncertainty"].gt(0).all()
    refer_where_the_folds_straddle_the_threshold(pd.read_csv(tmp_path / "p.csv"), spec)


def refer_where_the_folds_straddle_the_threshold(p: pd.DataFrame, spec: dict) -> None:
    """decision is refer exactly where mean +/- band * std of the fold logits (in calibrated units)
    lies on both sides of the threshold, or the image cannot be assessed."""
    logit = np.log(p["probability"] / (1 - p["probability"]))
    t = np.log(spec["threshold"] / (1 - spec["threshold"]))
    band = spec["refer_rule"]["band"] * p["uncertainty"] / spec["temperature"]
    straddles = ((logit - band) < t) & (t < (logit + band)) | (p["assessable"].astype(str) == "False")
    assert straddles.any() and (~straddles).any()  # both kinds occur on the demo set
    assert ((p["decision"] == "refer") == straddles).all()
    sides = np.where(p["probability"] >= spec["threshold"], "above threshold", "below threshold")
    assert (p["decision"][~straddles] == sides[~straddles]).all()


@pytest.mark.slow
def test_evaluate_scores_the_folder_as_predict_does(oof_run, demo_dir, tmp_path):
    out, _ = oof_run
    r = run_script(
        "src/inference/predict.py", "--checkpoint", out, demo_dir, "--out", tmp_path / "p.csv", "--workers", 0
    )
    assert r.returncode == 0, r.stderr
    meta = ["--metadata", demo_dir / "metadata.csv", "--images", demo_dir, "--workers", 0, "--bootstrap", 50]
    r = run_script("src/training/evaluate.py", "--checkpoint", out, *meta, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    predicted = pd.read_csv(tmp_path / "p.csv").set_index("image_name").sort_index()
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("image_name").sort_index()
    assert list(evaluated.index) == list(predicted.index) and len(evaluated) == 80
    for column in ("probability", "uncertainty"):
        np.testing.assert_allclose(evaluated[column], predicted[column], rtol=0, atol=1e-5)
    assert (evaluated["assessable"] == predicted["assessable"]).all()
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    referred = (predicted["decision"] == "refer").mean()  # the fold spread straddles, as predict.py's
    assert report["abstention"]["referred_share_at_rule"] == pytest.approx(referred) and referred > 0
    assert report["calibration"]["fitted_on"].endswith("out-of-fold logits of 80 images (3 folds)")
    # Every image trained some fold: the demo set is not external to the ensemble, and it says so.
    assert {c["image"] for c in report["near_copies_of_training"]} == set(evaluated.index.astype(str))
    r = run_script("src/training/evaluate.py", "--checkpoint", out)  # no own split to fit on
    assert r.returncode == 1 and "fold ensemble" in r.stderr and "--metadata" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_with_tta_evaluate_refers_what_predict_refers(oof_run, demo_dir, tmp_path):
    """The spread over 3 folds x 8 views, from each fold's mean and spread of views, is predict.py's."""
    out, _ = oof_run
    tta = tmp_path / "oof"
    shutil.copytree(out, tta, ignore=shutil.ignore_patterns("*.png", "last.pth", "best_model_epoch*"))
    spec = json.loads((out / "ensemble.json").read_text())
    (tta / "ensemble.json").write_text(json.dumps({**spec, "calibration_tta": True}))
    r = run_script("src/inference/predict.py", "--checkpoint", tta, demo_dir, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    meta = ["--metadata", demo_dir / "metadata.csv", "--workers", 0, "--bootstrap", 20]
    r = run_script("src/training/evaluate.py", "--checkpoint", tta, *meta)
    assert r.returncode == 0, r.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")
    report = json.loads((tta / "eval" / "metadata" / "report.json").read_text())  # inside the folder
    assert report["tta"] is True
    referred = (predicted["decision"] == "refer").mean()
    assert report["abstention"]["referred_share_at_rule"] == pytest.approx(referred)
    evaluated = pd.read_csv(tta / "eval" / "metadata" / "predictions.csv").sort_values("image_name")
    predicted = predicted.sort_values("image_name")
    for column in ("probability", "uncertainty"):
        np.testing.assert_allclose(evaluated[column], predicted[column], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_bad_member_or_ensemble_file_is_one_clear_error(oof_run, demo_dir, tmp_path):
    out, _ = oof_run
    bad = tmp_path / "oof"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("*.png", "last.pth", "best_model_epoch*"))
    (bad / "fold1" / "best.pth").write_bytes(b"not a checkpoint")
    r = run_script("src/inference/predict.py", "--checkpoint", bad, demo_dir, "--out", tmp_path / "p.csv")
    assert r.returncode == 1 and not (tmp_path / "p.csv").exists()
    assert r.stderr.startswith("error: ensemble") and "member fold1/best.pth" in r.stderr
    assert "Traceback" not in r.stderr
    meta = ["--metadata", demo_dir / "metadata.csv", "--out", tmp_path / "eval"]
    r = run_script("src/training/evaluate.py", "--checkpoint", bad, *meta)
    assert r.returncode == 1 and not (tmp_path / "eval").exists() and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ensemble") and "member fold1/best.pth" in r.stderr
    spec = json.loads((out / "ensemble.json").read_text())
    for members, message in (
        (["../oof/fold0/best.pth"], "not a relative path inside the folder"),
        (["/etc/passwd"], "not a relative path inside the folder"),
        ([], "must list 1 to"),
    ):
        (bad / "ensemble.json").write_text(json.dumps({**spec, "members": members}))
        with pytest.raises(CheckpointError, match=message):
            Ensemble(bad)
    (bad / "ensemble.json").unlink()
    with pytest.raises(CheckpointError, match="without ensemble.json"):
        Ensemble(bad)


@pytest.mark.slow
def test_the_service_serves_the_folds_as_one_and_the_context_stage_gets_their_mean(
    oof_run, context_model, demo_dir
):
    out, _ = oof_run
    ensemble = Ensemble(out)
    name = sorted(p.stem for p in demo_dir.glob("*.jpg"))[0]
    data = (demo_dir / f"{name}.jpg").read_bytes()
    each = ensemble.score_bytes(data)[0]
    proc, url = start_service(out)
    try:
        assert httpx.get(url + "/model").json()["kind"] == "ensemble"
        one = httpx.post(
            url + "/predict", files={"file": (f"{name}.jpg", data, "image/jpeg")}, timeout=60
        ).json()
        assert one["probability"] == pytest.approx(float(ensemble.probabilities(each.mean())), abs=1e-6)
        assert one["uncertainty"] == pytest.approx(float(each.std()), abs=1e-6) and one["stage"] == "image"
    finally:
        stop_service(proc)
    proc, url = start_service(out, CONTEXT_MODEL=str(context_model / "fused.json"))
    try:
        files = [("files", (f"{name}.jpg", data, "image/jpeg"))] * 2
        lesions = httpx.post(url + "/triage", files=files, timeout=60).json()["lesions"]
        expected = float(ensemble.probabilities(each.mean()))
        assert all(
            x["stage"] == "context" and x["image_probability"] == pytest.approx(expected) for x in lesions
        )
    finally:
        stop_service(proc)
