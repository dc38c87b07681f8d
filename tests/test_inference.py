"""Prediction CLI, Grad-CAM, ONNX export and int8: equal to evaluation, within tolerance, honest about AUC."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from src.core.checkpoint import load_model
from src.core.metrics import roc_auc
from src.data.transforms import load_input
from src.inference import predict as P
from src.inference.predictor import Predictor

from helpers import file_size_limit, run_script


def test_cli_predictions_equal_evaluation_probabilities(trained_run, demo_dir, tmp_path):
    out_dir = tmp_path / "run"  # a copy: the shared run stays uncalibrated and without a quality gate
    shutil.copytree(trained_run[0], out_dir)
    best = out_dir / trained_run[1].name
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 20, "--workers", 0)
    assert r.returncode == 0, r.stderr
    evaluated = pd.read_csv(out_dir / "eval" / "predictions.csv")
    r = run_script(
        "src/inference/predict.py",
        "--checkpoint",
        best,
        demo_dir / "metadata.csv",
        "--out",
        tmp_path / "p.csv",
        "--workers",
        0,
    )
    assert r.returncode == 0, r.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted.columns) == P.ANSWER_COLUMNS and len(predicted) == 80
    assert P.ANSWER_COLUMNS[:2] == ["image_name", "probability"]
    assert predicted["uncertainty"].isna().all()  # one model: no spread to report
    both = evaluated.merge(predicted, on="image_name")
    assert len(both) == len(evaluated) > 0
    # Same preprocessing and weights; float32 convolutions over other batch compositions differ in
    # the 6th or 7th digit (the demo validation images come 15 at once, here in batches of 32).
    np.testing.assert_allclose(both["probability_x"], both["probability_y"], rtol=0, atol=1e-5)
    threshold = load_model(best)[1]["threshold"]
    assert (both["label"] == (both["probability_y"] >= threshold).astype(int)).all()
    side = np.where(both["label"] == 1, "above threshold", "below threshold")
    assert (both["assessable_x"] == both["assessable_y"]).all()  # the same checks, the same pixels
    assert (both["decision"] == np.where(both["assessable_y"], side, "refer")).all()
    assert (both["threshold"] == threshold).all() and (both["stage"] == "image").all()


def views_spread_is_the_uncertainty(best, demo_dir, predicted: pd.DataFrame) -> None:
    """With TTA one model's uncertainty is the standard deviation of its 8 views' logits."""
    from src.data.transforms import dihedral_views
    from src.inference.predictor import Predictor

    names = predicted.index[:4]
    model = Predictor(best)
    x = torch.stack([load_input(str(demo_dir / f"{n}.jpg"), model.input) for n in names])
    views = np.stack([model.logits(v) for v in dihedral_views(x)])
    np.testing.assert_allclose(predicted.loc[names, "uncertainty"], views.std(axis=0), rtol=0, atol=1e-5)
    assert (predicted["uncertainty"] > 0).all()


def test_tta_follows_the_calibration_everywhere(trained_run, demo_dir, tmp_path):
    """A threshold fitted on TTA-averaged logits is applied to TTA-averaged logits, or refused."""
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("eval"))
    best = run / trained_run[1].name
    r = run_script(
        "src/training/evaluate.py", "--checkpoint", best, "--tta", "--bootstrap", 10, "--workers", 0
    )
    assert r.returncode == 0, r.stderr
    assert load_model(best)[1]["calibration_tta"] is True
    evaluated = pd.read_csv(run / "eval" / "predictions.csv")
    out = tmp_path / "p.csv"
    r = run_script("src/inference/predict.py", "--checkpoint", best, demo_dir, "--out", out, "--workers", 0)
    assert r.returncode == 0, r.stderr
    both = evaluated.merge(pd.read_csv(out), on="image_name")
    np.testing.assert_allclose(both["probability_x"], both["probability_y"], rtol=0, atol=1e-5)  # TTA
    predicted = pd.read_csv(out).set_index("image_name")
    views_spread_is_the_uncertainty(best, demo_dir, predicted)
    # evaluate.py's saved-rule row refers what prediction refers (unassessable, or views straddling)
    report = json.loads((run / "eval" / "report.json").read_text())
    referred = (predicted.loc[evaluated["image_name"], "decision"] == "refer").mean()
    assert report["abstention"]["referred_share_at_rule"] == pytest.approx(referred)
    refused = run_script("src/inference/predict.py", "--checkpoint", best, demo_dir, "--no-tta", "--out", out)
    assert (
        refused.returncode == 1 and refused.stderr.startswith("error: ") and "TTA-averaged" in refused.stderr
    )
    assert Predictor(best).info()["calibration_tta"] is True
    external = run_script(
        "src/training/evaluate.py", "--checkpoint", best, "--metadata", demo_dir / "metadata.csv", "--no-tta"
    )
    assert external.returncode == 1 and "TTA-averaged" in external.stderr


def test_cli_lists_unreadable_files_and_predicts_the_rest(trained_run, demo_dir, tmp_path):
    _, best = trained_run
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ISIC_9000001.jpg", "ISIC_9000002.jpg"):
        shutil.copy(demo_dir / name, folder / name)
    (folder / "ISIC_zero.jpg").write_bytes(b"")
    (folder / "ISIC_text.png").write_text("hello")
    r = run_script(
        "src/inference/predict.py",
        "--checkpoint",
        best,
        folder,
        "--out",
        tmp_path / "p.csv",
        "--workers",
        0,
        "--explain",
        tmp_path / "cams",
    )
    assert r.returncode == 0, r.stderr
    assert "2 images predicted, 2 unreadable" in r.stdout
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("image_name")
    assert p.loc["ISIC_zero", "error"] == "empty file (0 bytes)"
    assert p.loc["ISIC_text", "error"] == "not a readable image (JPEG or PNG expected)"
    assert 0 <= float(p.loc["ISIC_9000001", "probability"]) <= 1 and p.loc["ISIC_9000001", "error"] == ""
    assert sorted(f.name for f in (tmp_path / "cams").iterdir()) == [
        "ISIC_9000001_gradcam.png",
        "ISIC_9000002_gradcam.png",
    ]


def test_cli_lists_images_the_metadata_names_but_the_folder_lacks(trained_run, demo_dir, tmp_path):
    """Under pandas 3 a path that was not found is NaN, not None: it used to end in a traceback."""
    from src.data.metadata import read_metadata
    from src.data.splits import assign_folds
    from src.training.context import train_context

    _, best = trained_run
    table = pd.read_csv(demo_dir / "metadata.csv", dtype=str, keep_default_na=False)
    listed = pd.concat([table.head(5), table.head(1).assign(image_name="ISIC_missing")])
    listed.iloc[1, listed.columns.get_loc("age_approx")] = "1e6"  # not an age: read as missing, said so
    listed.iloc[2, listed.columns.get_loc("anatom_site_general_challenge")] = "elbow"
    listed.to_csv(tmp_path / "metadata.csv", index=False)
    labelled = read_metadata(demo_dir / "metadata.csv").table
    train_context(labelled, assign_folds(labelled, 3, 0))[0].save(tmp_path / "context.json")
    for extra in ([], ["--context", tmp_path / "context.json"]):
        out = tmp_path / "p.csv"
        args = [tmp_path / "metadata.csv", "--images", demo_dir, "--out", out, "--workers", 0, *extra]
        r = run_script("src/inference/predict.py", "--checkpoint", best, *args)
        assert r.returncode == 0, r.stderr
        assert "5 images predicted, 1 unreadable" in r.stdout
        assert "note: 1 rows have an age that is not a number of years in 0-120" in r.stderr
        assert ("1 images have a site the context model never saw ('elbow')" in r.stderr) == bool(extra)
        p = pd.read_csv(out, keep_default_na=False).set_index("image_name")
        assert (
            p.loc["ISIC_missing", "error"] == "file not found"
            and (p.drop("ISIC_missing")["error"] == "").all()
        )


def test_cli_single_image_and_bad_checkpoint(trained_run, demo_dir, tmp_path):
    _, best = trained_run
    r = run_script(
        "src/inference/predict.py",
        "--checkpoint",
        best,
        demo_dir / "ISIC_9000003.jpg",
        "--out",
        tmp_path / "p.csv",
    )
    assert r.returncode == 0 and len(pd.read_csv(tmp_path / "p.csv")) == 1
    r = run_script("src/inference/predict.py", "--checkpoint", tmp_path / "none.pth", demo_dir)
    assert r.returncode == 1 and "model file not found" in r.stderr


def test_grad_cam_overlay_has_the_input_size_and_is_not_constant(trained_run, demo_dir):
    from src.inference.gradcam import grad_cam, overlay_png

    _, best = trained_run
    model, ckpt = load_model(best)
    image = load_input(demo_dir / "ISIC_9000004.jpg", ckpt["img_size"])
    cam = grad_cam(model, image)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1
    png = cv2.imdecode(np.frombuffer(overlay_png(image, cam), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (32, 32, 3) and png.std() > 1
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind on the shared model


def paired_auc_spread(y, a, b, resamples=200, seed=0) -> float:
    """Standard deviation of AUC(a) - AUC(b) over resamples of the images: the noise that a
    difference between two scores of the same images has to stand out of."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        diffs.append(roc_auc(y[i], a[i]) - roc_auc(y[i], b[i]))
    return float(np.std(diffs))


def test_onnx_export_parity_and_int8_on_any_x86_cpu(demo_run, exported, tmp_path):
    """int8 may move each score a little; it must give the same file on every CPU and keep the
    AUC within the noise of the fp32 AUC, on all 1,200 demo images (on the 240 validation images
    alone, that noise is 0.018: a tolerance there would mean nothing)."""
    import onnx
    from onnx import numpy_helper

    from src.data.labels import load_labeled_images

    _, best, data_dir = demo_run
    onnx_fp32, onnx_int8, stdout = exported
    assert "tolerance 0.0001" in stdout
    # 7-bit weights: without VNNI (AVX2 only), full-range int8 weights saturate ONNX Runtime's
    # 16-bit pair sums and the same model scores differently (export.py, docs/deployment.md).
    graph = onnx.load(str(onnx_int8)).graph
    weights = [numpy_helper.to_array(w) for w in graph.initializer if w.data_type == onnx.TensorProto.INT8]
    layers = [m for m in Predictor(best).model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len([w for w in weights if w.ndim >= 2]) == len(layers)  # every layer's weights are int8
    assert max(np.abs(w.astype(int)).max() for w in weights) <= 64
    data = load_labeled_images(str(data_dir / "metadata.csv"), str(data_dir))
    x = torch.stack([load_input(p, 64) for p in data.table["path"]])
    y = data.table["target"].to_numpy()
    torch_model = Predictor(best)
    fp32, int8 = Predictor(onnx_fp32), Predictor(onnx_int8)
    p_torch = torch_model.probabilities(torch_model.logits(x[:240]))
    logits_fp32, logits_int8 = fp32.logits(x), int8.logits(x)
    assert len(y) == 1200 and np.abs(fp32.probabilities(logits_fp32[:240]) - p_torch).max() <= 1e-4
    auc_fp32, auc_int8 = roc_auc(y, logits_fp32), roc_auc(y, logits_int8)
    noise = paired_auc_spread(y, logits_int8, logits_fp32)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    cpu = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags) or "unknown"
    assert abs(auc_fp32 - auc_int8) <= max(0.005, 2 * noise), (auc_fp32, auc_int8, noise, f"CPU: {cpu}")
    assert fp32.img_size == 64 and int8.threshold == torch_model.threshold
    assert fp32.logits(x[:5], tta=True).shape == (5,)  # dynamic batch axis, and TTA on ONNX
    # The command on the int8 model gives the probabilities just computed (100 of the images).
    listed = data.table.head(100)
    listed[["image_name", "target"]].to_csv(tmp_path / "some.csv", index=False)
    r = run_script(
        "src/inference/predict.py", "--checkpoint", onnx_int8, tmp_path / "some.csv", "--images", data_dir,
        "--out", tmp_path / "int8.csv", "--workers", 0,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = pd.read_csv(tmp_path / "int8.csv", keep_default_na=False, dtype={"image_name": str})
    assert rows["image_name"].tolist() == listed["image_name"].tolist() and (rows["error"] == "").all()
    expected = int8.probabilities(logits_int8[:100])
    assert np.abs(rows["probability"].to_numpy(dtype=float) - expected).max() <= 1e-6


def test_an_export_onto_a_full_disk_says_so_and_leaves_nothing(trained_run, tmp_path):
    """The ONNX writers report a full disk as a bare short write that names no file."""
    out = tmp_path / "m.onnx"
    with file_size_limit(1_000_000):  # ResNet18's weights are 45 MB: the OS refuses half-way
        r = run_script("src/inference/export.py", "--checkpoint", trained_run[1], "--out", out)
    assert r.returncode == 1 and r.stderr.startswith("error: could not write the ONNX model ("), r.stderr
    assert f"is there room in {tmp_path}" in r.stderr and len(r.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_failed_export_leaves_nothing_loadable(tmp_path, monkeypatch):
    """An export that fails its parity check is removed, not left where serve.py would load it."""
    from src.core.model import build_model
    from src.inference import export

    monkeypatch.setattr(export, "check_parity", lambda *args: 0.5)
    model = build_model("resnet18", pretrained=False).eval()
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(export.ExportError, match="nothing was written"):
        export.export_checked(model, {"img_size": 32}, tmp_path / "m.onnx", {"arch": "resnet18"}, x)
    assert list(tmp_path.iterdir()) == []
