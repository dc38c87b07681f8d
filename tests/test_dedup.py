"""Near-duplicate detection: copies under other names, sizes, crops and orientations pair up; different
lesions do not; a merged split never separates copies; an external evaluation lists its copies of training."""

import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.dedup import fingerprint, near_pairs
from src.data.splits import check_no_leak, make_split

from helpers import SHARED, needs_shared, run_script, tiny_train_args, write_jpeg


def lesion(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    """A different random 'lesion' each seed: smooth coloured texture with a dark irregular blob."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 12)
    base = (base - base.min()) / (np.ptp(base) + 1e-6)
    skin = np.array([225, 170, 150], np.float32) * (0.75 + 0.25 * base)
    mask = np.zeros((h, w), np.float32)
    for _ in range(4):
        center = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
        cv2.ellipse(
            mask,
            center,
            (int(rng.integers(20, 70)), int(rng.integers(20, 70))),
            float(rng.integers(0, 180)),
            0,
            360,
            1.0,
            -1,
        )
    mask = cv2.GaussianBlur(mask, (0, 0), 4)[..., None]
    return np.clip(skin * (1 - 0.7 * mask) + np.array([60, 30, 20]) * 0.7 * mask, 0, 255).astype(np.uint8)


def copies(image: np.ndarray) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    jpeg = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 55])[1], cv2.IMREAD_COLOR)
    return {
        "re-encoded": jpeg,
        "cropped": image[h // 50 : -h // 50, w // 50 : -w // 50],
        "squashed": cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA),
        "flipped": image[:, ::-1],
        "rotated": np.ascontiguousarray(np.rot90(image)),
        "transposed": np.ascontiguousarray(image.transpose(1, 0, 2)),
    }


def test_copies_pair_with_their_original_and_different_lesions_never_pair():
    originals = [lesion(seed) for seed in range(12)]
    images, owner = [], []
    for k, image in enumerate(originals):
        images.append(image)
        owner.append(k)
        for copy in copies(image).values():
            images.append(copy)
            owner.append(k)
    pairs = near_pairs(np.stack([fingerprint(im) for im in images]))
    owner = np.array(owner)
    assert (owner[pairs["i"]] == owner[pairs["j"]]).all(), "two different lesions paired"
    found = {(int(i), int(j)) for i, j in zip(pairs["i"], pairs["j"], strict=True)}
    for k in range(len(originals)):
        members = np.flatnonzero(owner == k)
        for m in members[1:]:
            assert (members[0], m) in found, f"copy {m} of lesion {k} was missed"


def test_a_merged_split_never_separates_near_copies():
    n = 200
    table = pd.DataFrame(
        {
            "image_name": [f"I{i}" for i in range(n)],
            "target": (np.arange(n) % 7 == 0).astype(int),
            "patient_id": [f"P{i}" for i in range(n)],
            "lesion_id": "",
        }
    )
    rng = np.random.default_rng(0)
    links = pd.DataFrame({"i": rng.integers(0, n, 40), "j": rng.integers(0, n, 40), "similarity": 0.99})
    links = links[links["i"] != links["j"]]
    for seed in range(5):
        split = make_split(table, 0.2, 0, seed, near_pairs=links)
        sides = split["split"].to_numpy()
        assert (sides[links["i"]] == sides[links["j"]]).all() and check_no_leak(split) == 0
        linked = np.unique(np.r_[links["i"], links["j"]])
        assert (split["merged_groups"].to_numpy()[linked] > 1).all()
    plain = make_split(table, 0.2, 0, 0)
    assert (plain["merged_groups"] == 1).all() and plain["group"].tolist() == table["patient_id"].tolist()


def copied_dataset(folder, n=48, copies_of=(0, 1, 2)):
    """n different generated lesions (one patient each), plus flipped copies of a few under new names
    and other patients: the kind of copy that would cross a patient-grouped split."""
    rows = []
    for k in range(n):
        write_jpeg(folder / f"ISIC_{k:07d}.jpg", lesion(k, 120, 160))
        rows.append({"image_name": f"ISIC_{k:07d}", "patient_id": f"IP_{k}", "target": int(k % 4 == 0)})
    for k in copies_of:
        write_jpeg(folder / f"ISIC_{900 + k:07d}.jpg", lesion(k, 120, 160)[:, ::-1])
        rows.append(
            {"image_name": f"ISIC_{900 + k:07d}", "patient_id": f"IP_{900 + k}", "target": int(k % 4 == 0)}
        )
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


@pytest.mark.slow
def test_training_merges_near_copies_and_says_so(tmp_path):
    data = copied_dataset(tmp_path / "data")
    args = [a for a in tiny_train_args(data, tmp_path / "run", 1) if not a.startswith("--MERGE_NEAR")]
    r = run_script(*args, "--MAX_STEPS_PER_EPOCH=1")
    assert r.returncode == 0, r.stderr
    assert "near-duplicates joined 6 groups into 3 (6 images)" in r.stdout
    split = pd.read_csv(tmp_path / "run" / "split.csv").set_index("image_name")
    for k in range(3):
        original, copy = split.loc[f"ISIC_{k:07d}"], split.loc[f"ISIC_{900 + k:07d}"]
        assert (
            original["split"] == copy["split"]
            and original["group"] == copy["group"]
            and copy["merged_groups"] == 2
        )


@pytest.mark.slow
def test_external_evaluation_lists_its_near_copies_of_training_images(tmp_path):
    data = copied_dataset(tmp_path / "data", copies_of=())
    assert run_script(*tiny_train_args(data, tmp_path / "run", 1)).returncode == 0
    history = json.loads((tmp_path / "run" / "training_history.json").read_text())
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    trained_on = split.loc[split["split"] == "train", "image_name"].head(3).tolist()
    external = tmp_path / "external"
    external.mkdir()
    rows = []
    for k, name in enumerate(trained_on):  # rotated copies of three training images, under new names
        image = cv2.imread(str(data / f"{name}.jpg"))
        cv2.imwrite(str(external / f"EXT_{k}.jpg"), np.ascontiguousarray(np.rot90(image)))
        rows.append({"image_name": f"EXT_{k}", "target": k % 2})
    for k in range(8):  # and new lesions
        write_jpeg(external / f"NEW_{k}.jpg", lesion(1000 + k, 120, 160))
        rows.append({"image_name": f"NEW_{k}", "target": k % 2})
    pd.DataFrame(rows).to_csv(external / "labels.csv", index=False)
    r = run_script(
        "src/training/evaluate.py",
        "--checkpoint",
        tmp_path / "run" / history["best_checkpoint"],
        "--metadata",
        external / "labels.csv",
        "--out",
        tmp_path / "eval",
        "--bootstrap",
        10,
        "--workers",
        0,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    listed = {(c["image"], c["training_image"]) for c in report["near_copies_of_training"]}
    assert listed == {(f"EXT_{k}", name) for k, name in enumerate(trained_on)}
    assert "3 images of this set have a near-copy" in " ".join(report["notes"])
    assert "## Near-copies of training images" in (tmp_path / "eval" / "report.md").read_text()


@needs_shared
@pytest.mark.slow
def test_real_cross_size_copies_are_found_with_names_hidden(tmp_path):
    # 178 ISIC Archive originals (up to 3872x2592) also appear squashed to 256x256 in isic2017_256/;
    # HAM10000 is a separate source whose 300 images must (almost) never pair with the rest.
    images = SHARED / "images"
    labels = pd.read_csv(images / "labels.csv")
    labels = labels[
        labels["relpath"].str.split("/").str[0].isin(["isic_archive_fullres", "isic2017_256", "ham10000_224"])
    ]
    folder = tmp_path / "hidden"
    folder.mkdir()
    hidden = {}
    for k, row in enumerate(labels.itertuples()):
        name = f"X{k:05d}"  # names cannot help
        os.symlink(images / row.relpath, folder / f"{name}.jpg")
        hidden[name] = (row.relpath.split("/")[0], row.image_name)
    pd.DataFrame({"image_name": list(hidden), "target": labels["target"].to_numpy()}).to_csv(
        folder / "labels.csv", index=False
    )
    r = run_script(
        "src/data/dedup.py",
        "--metadata",
        folder / "labels.csv",
        "--images",
        folder,
        "--out",
        tmp_path / "out",
    )
    assert r.returncode == 0, r.stderr
    pairs = pd.read_csv(tmp_path / "out" / "duplicates.csv")
    found = [
        tuple(sorted((hidden[a], hidden[b]))) for a, b in zip(pairs["image_1"], pairs["image_2"], strict=True)
    ]
    full = {name for folder_, name in hidden.values() if folder_ == "isic_archive_fullres"}
    s17 = {name for folder_, name in hidden.values() if folder_ == "isic2017_256"}
    expected = {tuple(sorted((("isic_archive_fullres", n), ("isic2017_256", n)))) for n in full & s17}
    assert len(expected) == 178
    assert len(expected & set(found)) >= 0.97 * 178
    ham_pairs = [p for p in found if (p[0][0] == "ham10000_224") != (p[1][0] == "ham10000_224")]
    assert len(ham_pairs) <= 3, ham_pairs
    assert (tmp_path / "out" / "closest_pairs.png").stat().st_size > 10_000
