"""The ISIC 2024 (SLICE-3D) layout: metadata, images inside train-image.hdf5, the check command,
a tiny training run and a submission file, on the real sample in ../shared."""

import numpy as np
import pandas as pd
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


def train_tiny(images: str, out):
    return run_script(
        "src/training/train.py",
        f"--DATA_DIR={D / images}",
        f"--METADATA_CSV={D / 'train-metadata.csv'}",
        f"--CHECKPOINT_DIR={out}",
        "--MALIGNANT_NON_MELANOMA=positive",
        "--ARCH=resnet18",
        "--PRETRAINED=False",
        "--IMG_SIZE=32",
        "--BATCH_SIZE=16",
        "--NUM_EPOCHS=1",
        "--NUM_WORKERS=2",
        "--CACHE_DIR=",
        "--SELECT_BY=pauc",
    )


@pytest.fixture(scope="module")
def run2024(tmp_path_factory):
    """A tiny run trained on the images inside train-image.hdf5: (stdout, best checkpoint)."""
    out = tmp_path_factory.mktemp("run2024")
    r = train_tiny("train-image.hdf5", out)
    assert r.returncode == 0, r.stderr
    return r.stdout, out / "best_model_epoch1.pth"


def test_tiny_training_run_reads_the_hdf5_file(run2024):
    stdout, best = run2024
    assert "Data: 51 images, 21 melanoma" in stdout and "(by validation partial AUC" in stdout
    assert best.is_file()


@pytest.mark.slow  # trains (through train_tiny, which the automatic marking cannot see)
def test_tiny_training_run_reads_the_jpeg_folder(tmp_path):
    r = train_tiny("train-image/image", tmp_path / "run")
    assert r.returncode == 0 and "Data: 51 images, 21 melanoma" in r.stdout, r.stderr


def test_prediction_on_the_test_hdf5_writes_the_sample_submission_format(run2024, tmp_path):
    _, best = run2024
    sample = pd.read_csv(D / "sample_submission.csv")
    for source in (["test-metadata.csv", f"--images={D / 'test-image.hdf5'}"], ["test-image.hdf5"]):
        out = tmp_path / "submission.csv"
        r = run_script(
            "src/inference/predict.py",
            f"--checkpoint={best}",
            D / source[0],
            *source[1:],
            "--submission",
            f"--out={out}",
            "--workers=0",
        )
        assert r.returncode == 0, r.stderr
        written = pd.read_csv(out)
        assert list(written.columns) == list(sample.columns) == ["isic_id", "target"]
        assert (
            sorted(written["isic_id"]) == sorted(sample["isic_id"]) and written["target"].between(0, 1).all()
        )


def test_prediction_with_the_context_stage_scores_each_patient_together(run2024, tmp_path):
    from src.training import context

    _, best = run2024
    assert (
        context.main(
            [
                f"--metadata={D / 'train-metadata.csv'}",
                f"--out={tmp_path / 'ctx'}",
                "--folds=3",
                "--bootstrap=10",
                "--malignant-non-melanoma=positive",
            ]
        )
        == 0
    )
    # The official test metadata, plus an id the HDF5 file lacks (it used to end in a traceback).
    listed = pd.read_csv(D / "test-metadata.csv", dtype=str, keep_default_na=False)
    pd.concat([listed, listed.head(1).assign(isic_id="ISIC_9999999", patient_id="IP_other")]).to_csv(
        tmp_path / "test-metadata.csv", index=False
    )
    out = tmp_path / "pred.csv"
    r = run_script(
        "src/inference/predict.py",
        f"--checkpoint={best}",
        tmp_path / "test-metadata.csv",
        f"--images={D / 'test-image.hdf5'}",
        f"--context={tmp_path / 'ctx' / 'context_model.json'}",
        f"--out={out}",
        "--workers=0",
    )
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(out).set_index("image_name")
    decision = ["probability", "decision", "label", "threshold", "stage"]
    extra = [
        "image_probability",
        "uncertainty",
        "assessable",
        "reason",
        "patient_rank",
        "context_note",
        "error",
    ]
    assert list(pred.columns) == [*decision, *extra]
    assert (pred["stage"] == "context").all()  # the context stage's answer, at its own threshold
    assert pred.loc["ISIC_9999999", "error"] == "file not found"
    scored = pred.drop("ISIC_9999999")
    assert (
        len(scored) == 3 and scored["probability"].between(0, 1).all() and (scored["patient_rank"] == 1).all()
    )
    assert scored["context_note"].str.contains("lesion of this patient scored together").all()  # 1 each
    folder = run_script(
        "src/inference/predict.py",
        f"--checkpoint={best}",
        D / "test-image.hdf5",
        f"--context={tmp_path / 'ctx' / 'context_model.json'}",
        f"--out={out}",
    )
    assert folder.returncode == 1 and "--context needs metadata" in folder.stderr


def test_prediction_reads_the_jpeg_folder_with_the_training_metadata(run2024, tmp_path):
    _, best = run2024
    out = tmp_path / "pred.csv"
    r = run_script(
        "src/inference/predict.py",
        f"--checkpoint={best}",
        D / "train-metadata.csv",
        f"--images={D / 'train-image' / 'image'}",
        "--submission",
        f"--out={out}",
        "--workers=0",
    )
    assert r.returncode == 0, r.stderr
    written = pd.read_csv(out)
    assert list(written.columns) == ["isic_id", "target"] and len(written) == 51


def test_prepare_caches_the_images_inside_the_hdf5_file(tmp_path):
    from src.data.prepare import prepare_cache

    stats = prepare_cache(str(D / "train-image.hdf5"), str(tmp_path / "cache"), 64, workers=2, progress=False)
    assert stats["written"] == 51 and stats["unreadable"] == 0
    again = prepare_cache(str(D / "train-image.hdf5"), str(tmp_path / "cache"), 64, workers=2, progress=False)
    assert (
        again["written"] == 0 and again["skipped_existing"] == 51
    )  # keyed on each image's size and the file
    assert len(list((tmp_path / "cache").glob("ISIC_*.jpg"))) == 51
