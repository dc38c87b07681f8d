"""The ISIC 2024 (SLICE-3D) layout: metadata, images inside train-image.hdf5, the check command,
a tiny training run and a submission file, on the real sample in ../shared."""

import numpy as np
import pytest

from src.data import check
from src.data.images import decode_image, index_images
from src.data.loader import ImageDataset, make_loader
from src.data.metadata import measurement_columns, read_metadata

from helpers import SHARED, needs_shared, run_script

D = SHARED / "isic2024"
pytestmark = needs_shared


def test_metadata_melanoma_versus_any_malignant():
    counts = {}
    for policy in ("negative", "positive", "drop"):
        m = read_metadata(D / "train-metadata.csv", policy)
        counts[policy] = (len(m.table), int(m.table["target"].sum()), m.other_malignant)
    assert counts == {"negative": (51, 8, 13), "positive": (51, 21, 13), "drop": (38, 8, 13)}
    t = read_metadata(D / "train-metadata.csv").table
    assert m.formats == ["isic2024"] and len(measurement_columns(t.columns)) == 33
    assert t["tbp_lv_areaMM2"].dtype == float and t["age_approx"].isna().sum() == 2
    test = read_metadata(D / "test-metadata.csv", require_labels=False)
    assert test.formats == ["isic2024_unlabeled"] and (test.table["target"] == -1).all()


def test_hdf5_images_equal_the_jpeg_folder():
    inside, folder = index_images(D / "train-image.hdf5"), index_images(D / "train-image")
    assert len(inside) == 51 and set(inside) == set(folder)
    for name in list(inside)[:5]:
        assert np.array_equal(decode_image(inside[name]), decode_image(folder[name]))


def test_hdf5_images_load_in_worker_processes():
    paths = list(index_images(D / "train-image.hdf5").values())[:12]
    decode_image(paths[0])  # the parent holds an open handle before the workers fork
    loader = make_loader(ImageDataset(paths, np.zeros(12), 32), 4, workers=2)
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == 12 and all(b[3].all() for b in batches)


def test_check_command_prints_melanoma_and_other_malignant(capsys):
    args = [f"--metadata={D / 'train-metadata.csv'}", f"--images={D / 'train-image.hdf5'}", "--decode"]
    assert check.main(args) == 0
    out = capsys.readouterr().out
    assert "melanoma: 8" in out and "13 malignant but not melanoma" in out and "50" in out


@pytest.mark.parametrize("images", ["train-image.hdf5", "train-image/image"])
def test_tiny_training_run_reads_both_layouts(tmp_path, images):
    r = run_script(
        "src/training/train.py",
        f"--DATA_DIR={D / images}",
        f"--METADATA_CSV={D / 'train-metadata.csv'}",
        f"--CHECKPOINT_DIR={tmp_path / 'run'}",
        "--MALIGNANT_NON_MELANOMA=positive",
        "--PRETRAINED=False",
        "--IMG_SIZE=32",
        "--BATCH_SIZE=16",
        "--NUM_EPOCHS=1",
        "--NUM_WORKERS=2",
        "--CACHE_DIR=",
        "--SELECT_BY=pauc",
    )
    assert r.returncode == 0, r.stderr
    assert "Data: 51 images, 21 melanoma" in r.stdout and "(by validation partial AUC" in r.stdout
    assert list((tmp_path / "run").glob("best_model_epoch1.pth"))
