"""The image-quality gate: each measure moves the way its rule assumes, the fitted thresholds refuse
what each rule names and accept images like the training ones, and bad files are refused cleanly."""

import cv2
import numpy as np
import pytest

from src.data.images import ImageDecodeError
from src.data.quality import RULES, check, fit_gate, measure_file, measures

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


def test_measures_of_files_and_degenerate_images(tmp_path):
    write_jpeg(tmp_path / "a.jpg", lesion(1, 600, 800))
    values = measure_file(tmp_path / "a.jpg")
    assert values["short_side"] == 600 and set(values) == set(RULES[r][0] for r in RULES) | {"short_side"}
    for tiny in (np.zeros((1, 1, 3), np.uint8), np.full((2, 500, 3), 255, np.uint8)):
        assert all(np.isfinite(v) for v in measures(tiny).values())
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError):
        measure_file(tmp_path / "b.jpg")
