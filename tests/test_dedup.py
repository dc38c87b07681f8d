"""Near-duplicate detection: copies under other names, sizes, crops and orientations pair up; different
lesions do not; a merged split never separates copies; an external evaluation lists its copies of training."""

import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

import src.data.dedup as dedup
from src.data.dedup import DIM, _orientations, centred, fingerprint, invariant, near_pairs, stored_near_pairs
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


def all_pairs(vectors: np.ndarray, threshold: float = 0.94) -> set[tuple[int, int]]:
    """The reference: every pair scored in all 8 orientations (what near_pairs did before issue 20)."""
    mean = np.nanmean(vectors, axis=0)
    v = centred(vectors, np.mean([mean[perm] * sign for perm, sign in _orientations()], axis=0))
    best = np.max([v @ (v[:, perm] * sign).T for perm, sign in _orientations()], axis=0)
    i, j = np.nonzero(np.triu(best >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def clustered_fingerprints(seed: int = 0) -> np.ndarray:
    """2,000 unrelated unit vectors, 60 of them with 1 to 40 noisy copies in random orientations
    (groups larger than the 16 neighbours asked first), and 300 unreadable rows (NaN)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((2000, DIM)).astype(np.float32)
    copies = []
    for k in range(60):
        for _ in range(int(rng.integers(1, 41))):
            perm, sign = _orientations()[int(rng.integers(0, 8))]
            copies.append((v[k] + rng.normal(0, 0.02 * rng.random(), DIM))[perm] * sign)
    v = np.vstack([v, np.array(copies, np.float32), np.full((300, DIM), np.nan, np.float32)])
    v[: len(v) - 300] /= np.linalg.norm(v[: len(v) - 300], axis=1, keepdims=True)
    return v[rng.permutation(len(v))]


def test_the_orientation_free_summary_never_scores_below_the_exact_best():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, DIM)).astype(np.float32)
    b = (a + rng.normal(0, 0.3, a.shape)).astype(np.float32)
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    for perm, sign in _orientations():
        np.testing.assert_allclose(invariant(a[:, perm] * sign), invariant(a), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(invariant(a), axis=1), 1, atol=1e-5)
    exact = np.max([np.sum(a * b[:, perm] * sign, axis=1) for perm, sign in _orientations()], axis=0)
    assert (np.sum(invariant(a) * invariant(b), axis=1) >= exact - 1e-5).all()


def test_near_pairs_finds_what_comparing_every_pair_finds():
    """Candidates come from an approximate search, scores are exact: the same pairs and similarities
    as all pairs, groups of up to 41 copies included; 300 unreadable files pair with nothing."""
    vectors = clustered_fingerprints()
    expected = all_pairs(vectors)
    pairs = near_pairs(vectors)
    found = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))
    assert len(expected) > 5000 and found == expected
    assert not np.isnan(vectors[pairs["i"], 0]).any() and (pairs["similarity"] >= 0.94).all()
    half = len(vectors) // 2
    between = near_pairs(vectors[:half], vectors[half:])
    assert {(i, j + half) for i, j in zip(between["i"], between["j"], strict=True)} == {
        (i, j) for i, j in expected if i < half <= j
    }
    assert near_pairs(vectors[:0]).empty and near_pairs(vectors[:1]).empty
    assert near_pairs(np.full((50, DIM), np.nan, np.float32)).empty


def test_pairs_are_stored_per_set_and_a_damaged_or_forged_store_is_replaced(tmp_path, monkeypatch):
    vectors = clustered_fingerprints()[:800]
    first = stored_near_pairs(vectors, tmp_path)
    assert len(first) and (tmp_path / "near_pairs.npz").is_file()
    calls = []
    pair = dedup.near_pairs
    monkeypatch.setattr(dedup, "near_pairs", lambda *a, **k: calls.append(1) or pair(*a, **k))
    pd.testing.assert_frame_equal(stored_near_pairs(vectors, tmp_path), first)
    assert calls == []  # the same set: read back, not paired again
    other = vectors.copy()
    other[0] = other[1]
    assert stored_near_pairs(other, tmp_path)[["i", "j"]].values.tolist().count([0, 1]) == 1 and calls == [1]
    stored_near_pairs(vectors, tmp_path)
    with np.load(tmp_path / "near_pairs.npz") as z:
        forged = dict(z)
    forged["j"] = forged["j"] + len(vectors)  # rows that do not exist in this set
    with open(tmp_path / "near_pairs.npz", "wb") as f:
        np.savez(f, **forged)
    pd.testing.assert_frame_equal(stored_near_pairs(vectors, tmp_path), first)
    (tmp_path / "near_pairs.npz").write_bytes(b"PK\x03\x04 not a zip")
    pd.testing.assert_frame_equal(stored_near_pairs(vectors, tmp_path), first)
    assert calls == [1, 1, 1, 1]
    (tmp_path / "fingerprints.npz").write_bytes(b"PK\x03\x04 not a zip either")
    assert dedup._load_store(tmp_path) == {}


def test_fingerprints_are_reused_until_a_file_changes_and_its_old_version_is_forgotten(tmp_path):
    paths = [tmp_path / f"{k}.jpg" for k in range(3)]
    for k, path in enumerate(paths):
        write_jpeg(path, lesion(k, 80, 100))
    store = tmp_path / "store"
    first = dedup.fingerprints(paths, store, progress=False)
    write_jpeg(paths[1], lesion(7, 80, 100))
    os.utime(paths[1], ns=(1, 1))  # another version, whatever the clock says
    second = dedup.fingerprints(paths, store, progress=False)
    assert np.array_equal(first[[0, 2]], second[[0, 2]]) and not np.allclose(first[1], second[1])
    assert len(dedup._load_store(store)) == 3  # one entry per file, not one per version ever seen


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
