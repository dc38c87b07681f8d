"""The one preprocessing path, augmentation, the dataset's bad-file handling and the sampler."""

import numpy as np
import torch

from src.data.loader import EpochSampler, ImageDataset, make_loader
from src.data.transforms import augment_batch, load_input, load_input_bytes, preprocess

from helpers import gradient_image, write_jpeg


def test_preprocess_resizes_short_side_and_centre_crops():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # the centre square is white, the sides black
    out = preprocess(image, 50)
    assert out.shape == (3, 50, 50) and out.dtype == torch.uint8
    assert out.float().mean() > 250  # only the white centre survives the crop


def test_file_and_bytes_paths_give_the_same_input(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", gradient_image(300, 400))
    assert torch.equal(load_input(path, 64), load_input_bytes(path.read_bytes(), 64))


def test_augment_shape_range_determinism_and_colour_kept():
    x = torch.from_numpy(gradient_image(64, 64)).permute(2, 0, 1).float()[None].repeat(16, 1, 1, 1)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 255 and (a - x).abs().mean() > 5  # it does change images
    # Medical-safe colour: the mean colour moves by a few percent at most; no grayscale.
    assert torch.allclose(a.mean((0, 2, 3)), x.mean((0, 2, 3)), rtol=0.15)

    def chroma(t):
        return (t - t.mean(1, keepdim=True)).abs().mean()

    assert chroma(a) > 0.8 * chroma(x)


def test_dataset_skips_bad_file_instead_of_crashing(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", gradient_image())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:100])
    data = ImageDataset([good, bad, tmp_path / "gone.jpg"], [0, 1, 0], 32)
    loader = make_loader(data, batch_size=3, workers=2)
    images, targets, index, ok = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert ok.tolist() == [True, False, False] and images[1:].sum() == 0
    assert targets.tolist() == [0.0, 1.0, 0.0]


def test_epoch_sampler_is_deterministic_and_splits_ranks():
    targets = np.array([1] * 10 + [0] * 91)
    s = EpochSampler(targets, seed=3)
    s.set_epoch(2)
    first = s.indices()
    s.set_epoch(2)
    assert s.indices() == first and sorted(first) == list(range(101))
    s.set_epoch(3)
    assert s.indices() != first
    ranks = [EpochSampler(targets, seed=3, rank=r, world_size=2) for r in (0, 1)]
    parts = [r.indices() for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 51 and set(parts[0]) | set(parts[1]) == set(range(101))


def test_balanced_sampler_draws_classes_equally():
    targets = np.array([1] * 20 + [0] * 980)
    drawn = targets[EpochSampler(targets, seed=0, balanced=True).indices()]
    assert 0.45 < drawn.mean() < 0.55


def test_negative_sampling_takes_every_positive_and_fresh_negatives_each_epoch():
    targets = np.array([1] * 10 + [0] * 1000)
    s = EpochSampler(targets, seed=5, negatives_per_positive=3)
    assert len(s) == 40 and s.positive_weight() == 3.0
    epochs = []
    for epoch in range(3):
        s.set_epoch(epoch)
        drawn = s.indices()
        assert len(drawn) == len(set(drawn)) == 40  # without replacement
        assert set(np.flatnonzero(targets == 1)) <= set(drawn)
        epochs.append(set(drawn) - set(range(10)))
    assert len(epochs[0] & epochs[1]) < 10 and epochs[0] != epochs[2]  # fresh negatives each epoch
    s.set_epoch(1)
    again = EpochSampler(targets, seed=5, negatives_per_positive=3)
    again.set_epoch(1)
    assert again.indices() == s.indices()  # (seed, epoch) decide: a resumed run draws the same
    ranks = [EpochSampler(targets, seed=5, rank=r, world_size=2, negatives_per_positive=3) for r in (0, 1)]
    shared = set(ranks[0].indices()) | set(ranks[1].indices())
    assert len(shared) == 40 and len(ranks[0]) == len(ranks[1]) == 20
    few = EpochSampler(np.array([1] * 10 + [0] * 15), seed=0, negatives_per_positive=3)
    assert len(few) == 25 and few.positive_weight() == 1.5  # all 15 negatives, not 30


def test_pad_keeps_the_whole_image_and_crop_its_centre():
    from src.data.transforms import InputSpec, preprocess

    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :20] = 255  # a white band at the left edge, which a centre crop cuts away
    cropped = preprocess(image, InputSpec(50, "crop")).numpy()
    padded = preprocess(image, InputSpec(50, "pad")).numpy()
    assert cropped.max() == 0  # the band is outside the centre square
    assert padded[:, 12:37, :5].min() == 255 and padded[:, :12].max() == 0 and padded[:, 37:].max() == 0
    assert preprocess(image, 50).shape == (3, 50, 50) and preprocess(image, InputSpec(50)).equal(
        preprocess(image, 50)
    )


def test_shades_of_gray_removes_a_colour_cast_and_old_settings_mean_no_option():
    from src.data.transforms import InputSpec, shades_of_gray

    rng = np.random.default_rng(0)
    grey = rng.integers(60, 200, (64, 64, 1)).astype(np.float32)
    cast = np.clip(grey * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)  # a warm light
    balanced = shades_of_gray(cast).reshape(-1, 3).astype(np.float32).mean(axis=0)
    assert balanced.max() / balanced.min() < 1.05 < cast.reshape(-1, 3).mean(axis=0).max() / 100
    assert InputSpec.of({"img_size": 64}) == InputSpec(64, "crop", False)
