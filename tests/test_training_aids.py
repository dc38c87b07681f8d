"""The winners' training aids as settings (EMA of weights, gradient clipping and accumulation, label
smoothing) and the logs people watch (summary.csv, TensorBoard)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from src.core.checkpoint import load_checkpoint
from src.training.engine import WeightAverage, optimizer_steps

from helpers import run_script, tiny_train_args


def test_the_weight_average_moves_by_one_minus_the_decay_each_step():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()  # the first update copies; then each step keeps 90% of the average
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update()
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 2.0))
    assert optimizer_steps(10, 3) == 4 and optimizer_steps(9, 3) == 3 and optimizer_steps(5, 1) == 5


@pytest.mark.slow
def test_every_aid_trains_and_the_run_writes_its_summary_and_tensorboard_log(demo_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["--EMA_DECAY=0.9", "--GRAD_CLIP=1.0", "--ACCUMULATE_STEPS=2", "--LABEL_SMOOTHING=0.1"]
    extra += ["--TENSORBOARD=True", "--MAX_STEPS_PER_EPOCH=4"]
    r = run_script(*tiny_train_args(demo_dir, out, 2, *extra))
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "summary.csv")
    history = json.loads((out / "training_history.json").read_text())
    assert summary["epoch"].tolist() == [1, 2]
    assert summary["val_auc"].tolist() == pytest.approx([e["val_auc"] for e in history["epochs"]])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    last = load_checkpoint(out / "last.pth")
    trained, averaged = last["training_model_state"], last["model_state"]  # EMA: the average is the model
    assert not torch.equal(trained["backbone.fc.weight"], averaged["backbone.fc.weight"])
    assert set(last["ema_state"]) >= {"n_averaged"}
    best = load_checkpoint(out / history["best_checkpoint"])
    assert "training_model_state" not in best and best["config"]["EMA_DECAY"] == 0.9
    r = run_script(*tiny_train_args(demo_dir, out, 3, *extra, "--RESUME=True"))
    assert r.returncode == 0 and "Resuming after epoch 2" in r.stdout, r.stderr
    assert pd.read_csv(out / "summary.csv")["epoch"].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "setting,message",
    [
        ("--EMA_DECAY=1.0", "EMA_DECAY must be in"),
        ("--GRAD_CLIP=-1.0", "GRAD_CLIP cannot be negative"),
        ("--ACCUMULATE_STEPS=0", "ACCUMULATE_STEPS must be at least 1"),
        ("--LABEL_SMOOTHING=1.0", "LABEL_SMOOTHING must be in"),
    ],
)
def test_a_bad_aid_setting_is_refused_before_any_work(setting, message, tmp_path):
    r = run_script(*tiny_train_args(tmp_path / "none", tmp_path / "run", 1, setting))
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_diagnoses_get_one_name_across_formats_and_melanoma_is_read_from_the_softmax():
    from src.core.model import MelanomaNet
    from src.data.metadata import diagnosis_classes, diagnosis_names

    table = pd.DataFrame(
        {
            "diagnosis": ["MEL", "NV", "nv", "akiec", "seborrheic keratosis", "", "unknown", "nevus"],
            "target": [1, 0, 0, 0, 0, 0, 0, 1],  # the last: the target says melanoma, and it wins
        }
    )
    names = diagnosis_names(table).tolist()
    assert names == ["melanoma", "nevus", "nevus", "actinic keratosis", "seborrheic keratosis",
                     "unknown", "unknown", "melanoma"]  # fmt: skip
    classes = diagnosis_classes(table)
    assert classes[0] == "melanoma" and set(classes) == set(names) and len(classes) == 5
    model = MelanomaNet("resnet18", classes=classes).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        p = model(x, all_classes=True).softmax(1)[:, 0]
        assert torch.allclose(torch.sigmoid(model(x)), p, atol=1e-6)
