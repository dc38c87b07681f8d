"""The data commands as a user runs them: the check command, prepare and the demo generator."""

import json
import shutil

import cv2
import pytest

from helpers import SHARED, needs_shared, run_script

pytestmark = pytest.mark.slow  # every test here runs a command


def test_check_command_on_demo_data(demo_dir):
    r = run_script("src/data/check.py", "--images", demo_dir, "--metadata", demo_dir / "metadata.csv")
    assert r.returncode == 0, r.stderr
    assert "format: isic2020" in r.stdout and "leak check:    OK, no patient in both splits" in r.stdout
    r = run_script("src/data/check.py", "--images", demo_dir, "--json")  # metadata.csv found inside
    report = json.loads(r.stdout)
    assert report["rows"] == 80 and report["split"]["groups_in_both"] == 0 and report["unreadable"] == []


def test_check_command_on_broken_folder(demo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir, broken)
    names = sorted(broken.glob("ISIC_*.jpg"))
    names[0].unlink()
    names[1].write_bytes(b"")
    names[2].write_bytes(names[3].read_bytes()[:500])
    r = run_script("src/data/check.py", "--images", broken)
    assert r.returncode == 1
    assert f"error: 1 of 80 images listed are missing from {broken}/ ({names[0].stem})" in r.stderr
    r = run_script("src/data/check.py", "--images", broken, "--skip-missing")
    assert r.returncode == 1 and "error: 2 unreadable image files" in r.stderr
    assert f"{names[1]}: empty file (0 bytes)" in r.stdout
    assert f"{names[2]}: truncated JPEG (no end-of-image marker)" in r.stdout


def test_check_command_without_data_explains_how_to_get_it(tmp_path):
    r = run_script("src/data/check.py", cwd=tmp_path)
    assert r.returncode == 1 and "No ISIC data found" in r.stderr and "--demo" in r.stderr
    assert "Traceback" not in r.stderr


@needs_shared
def test_check_command_on_real_isic2017():
    d = SHARED / "isic2017_csv"
    csvs = ",".join(
        str(d / f"ISIC-2017_{p}_Part3_GroundTruth.csv") for p in ("Training", "Validation", "Test_v2")
    )
    r = run_script(
        "src/data/check.py", "--metadata", csvs, "--images", SHARED / "images" / "isic2017_256", "--json"
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["rows"], report["melanoma"], report["split"]["groups_in_both"]) == (2750, 521, 0)
    r = run_script("src/data/check.py", "--metadata", csvs, "--images", SHARED / "images" / "isic2017_256")
    assert "these labels have no patient or lesion ids, so one patient may be on both sides" in r.stdout


def test_prepare_is_resumable_atomic_and_lists_unreadable(demo_dir, tmp_path):
    images = tmp_path / "originals"
    shutil.copytree(demo_dir, images)
    (images / "ISIC_bad.jpg").write_text("not an image")
    out = tmp_path / "cache"
    r = run_script("src/data/prepare.py", "--images", images, "--out", out, "--size", 96, "--workers", 2)
    assert r.returncode == 0, r.stderr
    assert "80 written, 0 already there, 1 unreadable" in r.stdout
    assert "ISIC_bad.jpg" in (out / "unreadable.csv").read_text()
    assert not list(out.glob(".*.tmp")) and json.loads((out / "prepare.json").read_text())["size"] == 96
    assert min(cv2.imread(str(next(out.glob("ISIC_*.jpg")))).shape[:2]) == 96
    (out / "ISIC_9000000.jpg").unlink()
    r = run_script("src/data/prepare.py", "--images", images, "--out", out, "--size", 96)
    assert "1 written, 79 already there, 1 unreadable" in r.stdout  # the bad one is retried
    r = run_script("src/data/prepare.py", "--images", images, "--out", out, "--size", 128)
    assert r.returncode == 1 and "already holds a 96 px cache" in r.stderr


def test_demo_dataset_is_deterministic(tmp_path):
    from src.data.demo import make_demo_dataset

    a = make_demo_dataset(tmp_path / "a", n_images=12, seed=5)
    b = make_demo_dataset(tmp_path / "b", n_images=12, seed=5)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a" / "ISIC_9000003.jpg").read_bytes() == (
        tmp_path / "b" / "ISIC_9000003.jpg"
    ).read_bytes()
    assert "SYNTHETIC" in (tmp_path / "a" / "SYNTHETIC_README.txt").read_text()


def test_loader_uses_a_large_enough_cache_and_falls_back_otherwise(demo_dir, tmp_path, capsys):
    from src.data.labels import load_labeled_images
    from src.data.prepare import prepare_cache

    cache = tmp_path / "cache"
    prepare_cache(str(demo_dir), str(cache), size=96, workers=1, progress=False)
    data = load_labeled_images(
        str(demo_dir / "metadata.csv"), str(demo_dir), img_size=64, cache_dir=str(cache)
    )
    assert data.cache_dir == str(cache) and all(p.startswith(str(cache)) for p in data.table["path"])
    data = load_labeled_images(
        str(demo_dir / "metadata.csv"), str(demo_dir), img_size=128, cache_dir=str(cache)
    )
    assert data.cache_dir is None and not any(p.startswith(str(cache)) for p in data.table["path"])
    assert "holds 96 px images, smaller than IMG_SIZE=128" in capsys.readouterr().err


def test_prepare_recaches_changed_originals_and_forgets_fixed_failures(demo_dir, tmp_path):
    import os

    import numpy as np

    images = tmp_path / "originals"
    shutil.copytree(demo_dir, images)
    (images / "ISIC_bad.jpg").write_text("not an image")
    out = tmp_path / "cache"
    args = ("src/data/prepare.py", "--images", images, "--out", out, "--size", 48, "--workers", 1)
    assert run_script(*args).returncode == 0 and (out / "unreadable.csv").is_file()
    shutil.copy(images / "ISIC_9000001.jpg", images / "ISIC_bad.jpg")  # the bad file is fixed
    changed = images / "ISIC_9000002.jpg"
    cv2.imwrite(str(changed), np.full((60, 60, 3), 255, np.uint8))  # an original replaced by another image
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    r = run_script(*args)
    assert "2 written, 79 already there, 0 unreadable" in r.stdout, r.stdout
    assert not (out / "unreadable.csv").exists()
    assert cv2.imread(str(out / "ISIC_9000002.jpg")).min() > 240  # the new picture, not the old one


def test_training_says_how_many_images_came_from_a_partial_cache(demo_dir, tmp_path):
    from src.data.prepare import prepare_cache

    from helpers import tiny_train_args

    cache = tmp_path / "cache"
    prepare_cache(str(demo_dir), str(cache), size=48, workers=1, progress=False)
    for path in sorted(cache.glob("ISIC_*.jpg"))[:30]:
        path.unlink()  # as when prepare.py was interrupted
    args = [a for a in tiny_train_args(demo_dir, tmp_path / "run", 1) if not a.startswith("--CACHE_DIR")]
    r = run_script(*args, f"--CACHE_DIR={cache}", "--MAX_STEPS_PER_EPOCH=1")
    assert r.returncode == 0, r.stderr
    assert f"cache {cache} (50 images; 30 not cached yet, read from the originals)" in r.stdout


def odd_folder(demo_dir, tmp_path):
    """The demo images plus what used to abort a whole batch: a header over OpenCV's own pixel limit
    (40000x40000, a few hundred bytes) and symlink loops, as a folder and as an image."""
    import os
    import struct
    import zlib

    import numpy as np

    folder = tmp_path / "odd"
    shutil.copytree(demo_dir, folder)
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 40000, 40000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # a valid IHDR, CRC included
    (folder / "ISIC_9000003.jpg").unlink()
    (folder / "ISIC_9000003.png").write_bytes(bytes(png))
    os.symlink("loop", folder / "loop")
    (folder / "ISIC_9000004.jpg").unlink()
    os.symlink("ISIC_9000004.jpg", folder / "ISIC_9000004.jpg")
    return folder


def test_odd_files_are_skipped_with_a_reason_by_every_command(demo_dir, trained_run, tmp_path):
    import pandas as pd

    from helpers import tiny_train_args

    folder = odd_folder(demo_dir, tmp_path)
    r = run_script("src/data/prepare.py", "--images", folder, "--out", tmp_path / "cache", "--size", 48)
    assert r.returncode == 0 and "78 written, 0 already there, 2 unreadable" in r.stdout, r.stderr
    r = run_script("src/data/check.py", "--images", folder, "--decode")
    assert r.returncode == 1 and "error: 2 unreadable image files" in r.stderr and "Traceback" not in r.stderr
    r = run_script(
        "src/inference/predict.py",
        "--checkpoint",
        trained_run[1],
        folder,
        "--out",
        tmp_path / "p.csv",
        "--workers",
        0,
    )
    assert r.returncode == 0, r.stderr
    errors = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("image_name")["error"]
    assert "image is 40000x40000 pixels, above the limit" in errors["ISIC_9000003"]
    assert "Too many levels of symbolic links" in errors["ISIC_9000004"] and (errors == "").sum() == 78
    r = run_script(*tiny_train_args(folder, tmp_path / "run", 1))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
