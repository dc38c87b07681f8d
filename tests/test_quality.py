"""The image-quality gate: each measure moves the way its rule assumes, the fitted thresholds refuse
what each rule names and accept images like the training ones, and bad files are refused cleanly."""

import cv2
import numpy as np
import pytest

from src.data import quality
from src.data.images import ImageDecodeError
from src.data.quality import RULES, check, fit_gate, fit_gate_on_files, gate_sample, measure_file, measures

from helpers import write_jpeg


def lesion(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    """Textured skin with a darker irregular blob: a stand-in with the statistics of a dermoscopy image."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5) * 25
    base = np.array([200, 150, 130], np.float32) * rng.uniform(0.85, 1.1) + texture[..., None]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(
        mask, (w // 2, h // 2), (int(rng.integers(50, 110)), int(rng.integers(40, 90))), 30, 0, 360, 1, -1
    )
    mask = cv2.GaussianBlur(mask, (0, 0), 6)[..., None]
    return np.clip(base * (1 - 0.55 * mask), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def gate():
    return fit_gate([measures(lesion(seed)) for seed in range(200)])


def test_images_like_the_training_ones_pass_and_each_damage_is_named(gate):
    assert [check(gate, measures(lesion(seed))) for seed in range(1000, 1040)].count("") >= 39
    image = lesion(7)
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    damaged = {
        "blurred": cv2.GaussianBlur(image, (0, 0), 6),
        "overexposed": np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8),
        "too dark": (image * 0.2).astype(np.uint8),
        "nearly uniform": np.full_like(image, 128),
        "greyscale": grey,
    }
    for reason, bad in damaged.items():
        assert check(gate, measures(bad)) == reason
    assert check(gate, measures(lesion(7, 40, 50), short_side=40)) == "too small"
    assert list(gate) == list(RULES)


def test_blur_lowers_sharpness_whatever_the_contrast():
    image = lesion(3)
    dim = (image * 0.4).astype(np.uint8)
    for picture in (image, dim):
        values = [measures(cv2.GaussianBlur(picture, (0, 0), s))["sharpness"] for s in (0.1, 2, 4, 8)]
        assert values == sorted(values, reverse=True)
    assert measures(dim)["sharpness"] == pytest.approx(measures(image)["sharpness"], rel=0.2)


def test_the_gate_is_fitted_on_a_fixed_sample_of_a_large_training_set(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "MAX_GATE_IMAGES", 6)
    paths = [tmp_path / f"{i}.jpg" for i in range(15)]
    for i, path in enumerate(paths):
        write_jpeg(path, lesion(i, 120, 160) // (1 + i % 4))  # brightness differs between images
    chosen = gate_sample(paths)
    assert len(set(chosen)) == 6 and set(chosen) <= set(map(str, paths)) and chosen == gate_sample(paths)
    assert gate_sample(paths[:6]) == [str(p) for p in paths[:6]]  # a small set: every image
    fitted = fit_gate_on_files(paths, 64, workers=1, progress=False)
    assert fitted == fit_gate([measure_file(p, 64) for p in chosen])
    assert fitted != fit_gate([measure_file(p, 64) for p in paths])


def test_measures_of_files_and_degenerate_images(tmp_path):
    write_jpeg(tmp_path / "a.jpg", lesion(1, 600, 800))
    values = measure_file(tmp_path / "a.jpg")
    assert values["short_side"] == 600 and set(values) == set(RULES[r][0] for r in RULES) | {"short_side"}
    for tiny in (np.zeros((1, 1, 3), np.uint8), np.full((2, 500, 3), 255, np.uint8)):
        assert all(np.isfinite(v) for v in measures(tiny).values())
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError):
        measure_file(tmp_path / "b.jpg")


def test_a_gate_read_from_a_file_is_checked(gate):
    from src.core.checkpoint import CheckpointError, check_settings
    from src.data.quality import gate_problem

    assert gate_problem(gate) == ""
    settings = {"arch": "resnet18", "img_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3}
    check_settings({**settings, "quality_gate": gate}, "x.pth")
    for bad in (
        [],
        {"blurred": {"measure": "brightness", "side": "low", "threshold": 0.1}},
        {"blurred": {"measure": "sharpness", "side": "low", "threshold": float("nan")}},
        {"exploded": {"measure": "sharpness", "side": "low", "threshold": 0.1}},
        {"blurred": "low"},
    ):
        with pytest.raises(CheckpointError, match="quality_gate"):
            check_settings({**settings, "quality_gate": bad}, "x.pth")


@pytest.mark.slow
def test_evaluation_fits_the_gate_and_prediction_says_which_images_it_cannot_assess(
    trained_run, demo_dir, tmp_path
):
    import shutil

    import pandas as pd

    from src.core.checkpoint import load_checkpoint

    from helpers import run_script

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    best = run / trained_run[1].name
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 20, "--workers", 0)
    assert r.returncode == 0, r.stderr
    assert list(load_checkpoint(best)["quality_gate"]) == list(RULES)
    folder = tmp_path / "in"
    folder.mkdir()
    names = sorted(p.name for p in demo_dir.glob("*.jpg"))[:3]
    for name in names:
        shutil.copy(demo_dir / name, folder / name)
    image = cv2.cvtColor(cv2.imread(str(demo_dir / names[0])), cv2.COLOR_BGR2RGB)
    write_jpeg(folder / "blank.jpg", np.full((300, 300, 3), 128, np.uint8))
    write_jpeg(folder / "black.jpg", np.zeros((300, 300, 3), np.uint8))
    write_jpeg(folder / "grey.jpg", np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2))
    r = run_script(
        "src/inference/predict.py", "--checkpoint", best, folder, "--out", tmp_path / "p.csv", "--workers", 0
    )
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("image_name")
    real = [n[:-4] for n in names]
    assert (p.loc[real, "assessable"].astype(str).str.lower() == "true").sum() >= 2
    assert p.loc["blank", "reason"] == "nearly uniform" and p.loc["black", "reason"] in (
        "underexposed",
        "too dark",
    )
    assert p.loc["grey", "reason"] == "greyscale"
    assert (p.loc[["blank", "black", "grey"], "assessable"].astype(str).str.lower() == "false").all()
    assert p["probability"].astype(float).between(0, 1).all()  # still scored, clearly marked
