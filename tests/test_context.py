"""The context stage: features that never read the label, patient-grouped folds, a model file that
loads without running code, and the command on real ISIC 2020 and ISIC 2024 metadata."""

import json

import numpy as np
import pandas as pd
import pytest

from src.data.metadata import read_metadata, split_groups
from src.data.patient_context import context_features, has_lesion_ids
from src.data.splits import SplitError, assign_folds
from src.training import context as C

from helpers import SHARED, needs_shared, run_script

ISIC2020 = SHARED / "isic2020_csv" / "ISIC_2020_Training_GroundTruth_v2.csv"
ISIC2024 = SHARED / "isic2024"


@pytest.fixture(scope="module")
def real2020():
    """400 real patients (about 6,500 images) of the ISIC 2020 ground truth."""
    table = read_metadata(ISIC2020).table
    groups = split_groups(table)
    keep = np.random.default_rng(0).permutation(np.unique(groups))[:400]
    return table[np.isin(groups, keep)].reset_index(drop=True)


@needs_shared
def test_no_feature_reads_the_target(real2020):
    sites = sorted(set(real2020["anatom_site"]) - {""})
    with pytest.raises(ValueError, match="must not see the labels"):
        context_features(real2020, sites)
    features = context_features(real2020.drop(columns="target"), sites)
    shuffled = real2020.assign(target=np.random.default_rng(1).permutation(real2020["target"].to_numpy()))
    assert context_features(shuffled.drop(columns="target"), sites).equals(features)
    # A model's own path drops the labels too: the same rows give the same features with or without them.
    model, _ = C.train_context(real2020, assign_folds(real2020, 3, 0))
    assert model.features_for(real2020).equals(model.features_for(shuffled))


@needs_shared
def test_folds_keep_each_patient_whole_and_scores_are_out_of_fold(real2020):
    folds = assign_folds(real2020, 3, 0, split_groups(real2020))
    model, oof = C.train_context(real2020, folds)
    groups = split_groups(real2020)
    assert pd.Series(folds).groupby(groups).nunique().max() == 1
    x = model.features_for(real2020).to_numpy(np.float64)
    for k, booster in enumerate(model.boosters):  # booster k trained without fold k, and scored it
        held_out = folds == k
        assert np.allclose(booster.raw_score(x[held_out]), oof[held_out], rtol=0, atol=1e-9)
    leaky = folds.copy()
    leaky[np.flatnonzero(groups == groups[0])[0]] = (folds[0] + 1) % 3  # one image of a patient moves
    with pytest.raises(SplitError, match="more than one fold"):
        C.train_context(real2020, leaky)


@needs_shared
def test_patient_context_adds_to_metadata_alone(real2020):
    folds = assign_folds(real2020, 5, 0, split_groups(real2020))
    _, oof = C.train_context(real2020, folds)
    y = real2020["target"].to_numpy()
    from src.core.metrics import roc_auc

    assert roc_auc(y, oof) > 0.7  # metadata alone reaches about 0.67 on ISIC 2020


@needs_shared
def test_model_file_round_trip_and_refusal(real2020, tmp_path):
    model, _ = C.train_context(real2020, assign_folds(real2020, 3, 0))
    model.save(tmp_path / "m.json")
    loaded = C.ContextModel.load(tmp_path / "m.json")
    assert np.allclose(loaded.margins(real2020), model.margins(real2020))
    assert loaded.threshold == model.threshold and loaded.features == model.features
    body = json.loads((tmp_path / "m.json").read_text())
    body["boosters"] = ["cos\nsystem\n(S'echo pwned'\ntR."]  # a pickle where a model should be
    (tmp_path / "bad.json").write_text(json.dumps(body))
    with pytest.raises(C.ContextError, match="cannot load context model"):
        C.ContextModel.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(C.ContextError, match="not a context model"):
        C.ContextModel.load(tmp_path / "other.json")


@needs_shared
def test_isic2024_measurements_are_features_and_partial_lesion_ids_are_not():
    table = read_metadata(ISIC2024 / "train-metadata.csv").table
    assert not has_lesion_ids(table)  # only biopsied lesions have one: a label signal, left out
    features = context_features(table.drop(columns="target"), ["posterior torso"], lesion_features=False)
    assert {"clin_size_long_diam_mm", "tbp_lv_areaMM2_patient_z", "tbp_lv_deltaLBnorm_patient_rank"} <= set(
        features.columns
    )
    assert not {"lesion_images", "patient_lesions"} & set(features.columns)


@needs_shared
def test_command_on_isic2024_sample(tmp_path):
    out = tmp_path / "ctx"
    r = C.main(
        [
            f"--metadata={ISIC2024 / 'train-metadata.csv'}",
            f"--out={out}",
            "--folds=3",
            "--bootstrap=20",
            "--malignant-non-melanoma=positive",
        ]
    )
    assert r == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 51 and report["melanoma"] == 21 and list(report["stages"]) == ["context"]
    oof = pd.read_csv(out / "oof.csv")
    assert list(oof.columns) == C.OOF_COLUMNS and len(oof) == 51
    assert (out / "feature_importance.png").stat().st_size > 1000


@pytest.mark.slow
@needs_shared
def test_benchmark_prints_the_promised_last_line():
    r = run_script("benchmarks/context.py", f"--metadata={ISIC2020}", "--patients=300", "--bootstrap=50")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    words = last.split()
    assert words[:2] == ["context-only", "AUC"] and words[5] == "pAUC", last
    assert float(words[2]) > 0.65
