"""Splits: no patient on both sides, melanoma rate kept, deterministic, written and read back."""

import numpy as np
import pandas as pd
import pytest

from src.data.metadata import read_metadata
from src.data.splits import (
    SplitError,
    assign_folds,
    check_no_leak,
    make_split,
    read_split,
    split_summary,
    write_split,
)

from helpers import SHARED, needs_shared


@pytest.fixture(scope="module")
def isic2020():
    return read_metadata(SHARED / "isic2020_csv" / "ISIC_2020_Training_GroundTruth.csv").table


@needs_shared
def test_real_2020_folds_no_leak_and_stratified(isic2020):
    folds = assign_folds(isic2020, 5, seed=42)
    overall = isic2020.target.mean()
    assert abs(overall - 0.0176) < 0.0002
    for fold in range(5):
        split = make_split(isic2020, 0.2, fold, 42)
        assert check_no_leak(split) == 0
        val = split[split.split == "val"]
        assert (val.fold == fold).all() and len(val) == (folds == fold).sum()
        for part in ("train", "val"):
            rate = split.loc[split.split == part, "target"].mean()
            assert abs(rate - overall) < 0.005, (fold, part, rate)


@needs_shared
def test_real_2020_split_deterministic_for_seed(isic2020):
    a, b = make_split(isic2020, 0.2, 0, 7), make_split(isic2020, 0.2, 0, 7)
    assert a.equals(b)
    assert not a.split.equals(make_split(isic2020, 0.2, 0, 8).split)


def test_patients_never_cross_and_lesions_group_when_no_patient_ids():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "image_name": [f"I{i}" for i in range(300)],
            "target": rng.random(300) < 0.2,
            "patient_id": "",
            "lesion_id": [f"L{i // 3}" for i in range(300)],
        }
    )
    table["target"] = table.target.astype(int)
    split = make_split(table, 0.25, 1, 0)
    lesion_sides = split.groupby(table.lesion_id)["split"].nunique()
    assert (lesion_sides == 1).all() and check_no_leak(split) == 0
    assert 0.2 < (split.split == "val").mean() < 0.3


def test_bad_settings():
    table = pd.DataFrame(
        {"image_name": ["a", "b"], "target": [0, 1], "patient_id": ["p", "q"], "lesion_id": ""}
    )
    with pytest.raises(SplitError, match="VAL_FRACTION must be between 0 and 1"):
        make_split(table, 1.5, 0, 0)
    with pytest.raises(SplitError, match="FOLD must be in 0..4"):
        make_split(table, 0.2, 5, 0)
    with pytest.raises(
        SplitError, match=r"only 2 split groups \(patients, else lesions, else images\) for 5 folds"
    ):
        make_split(table, 0.2, 0, 0)


def test_split_file_round_trip(tmp_path):
    table = pd.DataFrame(
        {
            "image_name": [f"ISIC_{i:07d}" for i in range(40)],
            "target": [i % 5 == 0 for i in range(40)],
            "patient_id": [f"IP_{i // 4}" for i in range(40)],
            "lesion_id": "",
        }
    )
    table["target"] = table.target.astype(int)
    split = make_split(table, 0.2, 0, 3)
    write_split(split, tmp_path / "split.csv")
    back = read_split(tmp_path / "split.csv")
    assert (
        back.image_name.tolist() == split.image_name.tolist() and back.split.tolist() == split.split.tolist()
    )
    assert back.image_name[0] == "ISIC_0000000"  # ids stay text, zeros kept
    assert split_summary(back)["groups_in_both"] == 0


def test_groups_say_what_they_are_and_old_split_files_still_read(tmp_path):
    table = pd.DataFrame(
        {
            "image_name": ["a", "b", "c"],
            "target": [0, 1, 0],
            "patient_id": ["IP_1", "", ""],
            "lesion_id": ["", "IL_2", ""],
        }
    )
    split = make_split(table, 0.5, 0, 0)
    assert split["group"].tolist() == ["IP_1", "lesion:IL_2", "image:c"]
    assert split["group_kind"].tolist() == ["patient", "lesion", "image"]
    old = split.rename(columns={"group": "patient_id"}).drop(columns="group_kind")  # a split.csv from before
    old.to_csv(tmp_path / "split.csv", index=False)
    back = read_split(tmp_path / "split.csv")
    assert (
        back["group"].tolist() == split["group"].tolist()
        and back["group_kind"].tolist() == split["group_kind"].tolist()
    )
