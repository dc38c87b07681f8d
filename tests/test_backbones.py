"""The other backbone families (EfficientNet, ConvNeXt, ViT) and the preprocessing options (whole
image padded, Shades-of-Gray colour constancy): each trains a few steps at 32 px from random init
through train.py, and its checkpoint predicts, exports (ONNX parity) and serves with the one
preprocessing path; weights and the checks' features fit the family."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from src.core.checkpoint import CheckpointError, check_settings, load_model
from src.core.model import FEATURE_SIZES, MelanomaNet, size_problem
from src.data.transforms import InputSpec, load_input

from helpers import run_script, start_service, stop_service, tiny_train_args

pytestmark = pytest.mark.slow

CASES = {
    "efficientnet_b0": ["--ARCH=efficientnet_b0"],
    "convnext_tiny": ["--ARCH=convnext_tiny"],
    "vit_b_16": ["--ARCH=vit_b_16"],
    "resnet18, padded and colour-balanced": ["--INPUT_FIT=pad", "--COLOUR_CONSTANCY=True"],
    "resnet18, diagnosis target": ["--TARGET=diagnosis", "--IMBALANCE=focal", "--LABEL_SMOOTHING=0.1"],
}


@pytest.mark.parametrize("case", CASES)
def test_each_family_and_input_option_trains_predicts_exports_and_serves_alike(case, demo_dir, tmp_path):
    out = tmp_path / "run"
    extra = [*CASES[case], "--BATCH_SIZE=8", "--MAX_STEPS_PER_EPOCH=3"]
    r = run_script(*tiny_train_args(demo_dir, out, 1, *extra))
    assert r.returncode == 0, r.stderr
    best = out / json.loads((out / "training_history.json").read_text())["best_checkpoint"]
    model, ckpt = load_model(best)
    arch, spec = ckpt["arch"], InputSpec.of(ckpt)
    assert model.head.in_features == FEATURE_SIZES[arch] and spec.size == 32
    if "--TARGET=diagnosis" in CASES[case]:  # a softmax over the demo's diagnoses, melanoma first
        assert ckpt["classes"][0] == "melanoma" and model.head.out_features == len(ckpt["classes"]) >= 2
    names = sorted(p.stem for p in demo_dir.glob("*.jpg"))[:4]
    x = torch.stack([load_input(str(demo_dir / f"{n}.jpg"), spec) for n in names])
    with torch.no_grad():
        logits, features = model.logits_and_features(x)
    assert features.shape == (4, FEATURE_SIZES[arch])
    if spec != InputSpec(32):  # the options change the pixels, so a path that ignored them would differ
        plain = torch.stack([load_input(str(demo_dir / f"{n}.jpg"), 32) for n in names])
        assert not torch.equal(plain, x)
    listed = tmp_path / "some.csv"
    pd.read_csv(demo_dir / "metadata.csv").set_index("image_name").loc[names].reset_index().to_csv(listed)
    predicted = tmp_path / "p.csv"
    r = run_script("src/inference/predict.py", "--checkpoint", best, listed, "--images", demo_dir,
                   "--out", predicted, "--workers", 0)  # fmt: skip
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(predicted).set_index("image_name").loc[names, "probability"].to_numpy()
    np.testing.assert_allclose(p, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-5)  # not calibrated yet
    onnx = tmp_path / "model.onnx"
    r = run_script("src/inference/export.py", "--checkpoint", best, "--out", onnx, "--images", demo_dir)
    assert r.returncode == 0, r.stderr  # export.py checks ONNX against PyTorch within 1e-4
    proc, url = start_service(onnx)
    try:
        data = (demo_dir / f"{names[0]}.jpg").read_bytes()
        served = httpx.post(url + "/predict", files={"file": data}, timeout=60).json()["probability"]
    finally:
        stop_service(proc)
    assert served == pytest.approx(float(p[0]), abs=1e-4)
    if spec != InputSpec(32):
        evaluation_prepares_images_alike(model, spec, best, demo_dir)  # it calibrates: last


def test_a_vit_needs_a_side_its_patches_divide_and_checkpoints_say_so():
    assert size_problem("vit_b_16", 224) == "" and "multiple of 16" in size_problem("vit_b_16", 100)
    assert size_problem("convnext_tiny", 100) == ""
    settings = {"arch": "vit_b_16", "img_size": 100, "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(CheckpointError, match="multiple of 16"):
        check_settings(settings, "x.pth")
    with pytest.raises(CheckpointError, match="arch 'vgg16' is not one of"):
        check_settings({**settings, "arch": "vgg16"}, "x.pth")


def test_resnet_checkpoints_keep_their_weight_names():
    """Checkpoints written before the other families load unchanged: the head is still backbone.fc."""
    names = list(MelanomaNet("resnet18").state_dict())
    assert names[-2:] == ["backbone.fc.weight", "backbone.fc.bias"]


def evaluation_prepares_images_alike(model, spec: InputSpec, best, demo_dir) -> None:
    """evaluate.py's logits of the validation images are the model's on images prepared by spec."""
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 20, "--workers", 0)
    assert r.returncode == 0, r.stderr
    evaluated = pd.read_csv(best.parent / "eval" / "predictions.csv").head(6)
    x = torch.stack([load_input(str(demo_dir / f"{n}.jpg"), spec) for n in evaluated["image_name"]])
    with torch.no_grad():
        np.testing.assert_allclose(evaluated["logit"], model(x).numpy(), rtol=0, atol=1e-4)
