"""Label parsing: every real format with the official counts, and every bad-data case with its message."""

import textwrap

import pytest

from src.data.metadata import MetadataError, age_in_years, detect_format, read_metadata, split_groups

from helpers import SHARED, needs_shared


def csv(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@needs_shared
@pytest.mark.parametrize(
    "name",
    ["ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv", "kaggle_train.csv"],
)
def test_isic2020_real_counts(name):
    m = read_metadata(SHARED / "isic2020_csv" / name)
    t = m.table
    assert m.formats == ["isic2020"]
    assert (len(t), int(t.target.sum()), t.patient_id.nunique()) == (33126, 584, 2056)
    assert set(t.diagnosis[t.target == 1]) == {"melanoma"}
    assert t.age_approx.dropna().between(0, 90).all()


@needs_shared
def test_isic2020_v2_keeps_lesion_ids():
    t = read_metadata(SHARED / "isic2020_csv" / "ISIC_2020_Training_GroundTruth_v2.csv").table
    assert t.lesion_id.nunique() == 32701


@needs_shared
def test_official_duplicates_are_removed():
    d = SHARED / "isic2020_csv"
    m = read_metadata(
        d / "ISIC_2020_Training_GroundTruth.csv", duplicates_csv=d / "ISIC_2020_Training_Duplicates.csv"
    )
    assert len(m.table) == 33126 - 425 and m.dropped == {"official duplicate": 425}


@needs_shared
def test_kaggle_test_is_unlabeled():
    path = SHARED / "isic2020_csv" / "kaggle_test.csv"
    m = read_metadata(path, require_labels=False)
    assert (
        len(m.table) == 10982 and m.table.patient_id.nunique() == 690 and m.formats == ["isic2020_unlabeled"]
    )
    assert (m.table.target == -1).all()
    with pytest.raises(MetadataError, match="has no 'target' column"):
        read_metadata(path)


@needs_shared
def test_isic2019_real_counts_and_side_metadata():
    t = read_metadata(SHARED / "isic2019_csv" / "ISIC_2019_Training_GroundTruth.csv").table
    assert len(t) == 25331 and int(t.target.sum()) == 4522
    counts = t.diagnosis.value_counts().to_dict()
    assert counts == {
        "NV": 12875,
        "MEL": 4522,
        "BCC": 3323,
        "BKL": 2624,
        "AK": 867,
        "SCC": 628,
        "VASC": 253,
        "DF": 239,
    }
    # Ages, sites, sexes and lesion ids come from ISIC_2019_Training_Metadata.csv beside it.
    assert t.age_approx.notna().sum() > 24000 and (t.lesion_id != "").sum() > 20000


@needs_shared
@pytest.mark.parametrize(
    "part,rows,mel,sk", [("Training", 2000, 374, 254), ("Validation", 150, 30, 42), ("Test_v2", 600, 117, 90)]
)
def test_isic2017_real_counts(part, rows, mel, sk):
    t = read_metadata(SHARED / "isic2017_csv" / f"ISIC-2017_{part}_Part3_GroundTruth.csv").table
    assert (len(t), int(t.target.sum()), int((t.diagnosis == "seborrheic keratosis").sum())) == (
        rows,
        mel,
        sk,
    )


@needs_shared
def test_ham10000_real_counts_and_lesion_groups():
    t = read_metadata(SHARED / "ham10000_csv" / "HAM10000_metadata.csv").table
    assert len(t) == 10015 and int(t.target.sum()) == 1113
    assert t.diagnosis.value_counts().to_dict() == {
        "nv": 6705,
        "mel": 1113,
        "bkl": 1099,
        "bcc": 514,
        "akiec": 327,
        "vasc": 142,
        "df": 115,
    }
    assert len(set(split_groups(t))) == 7470  # no patient ids: images of one lesion stay together


@needs_shared
def test_isic_cli_real_metadata():
    m = read_metadata(SHARED / "isic_cli_metadata" / "metadata.csv")
    assert m.formats == ["isic_archive"] and len(m.table) == 27
    assert int(m.table.target.sum()) == 3  # the three "Malignant melanocytic proliferations (Melanoma)"


@needs_shared
def test_malignant_non_melanoma_policy_on_real_isic_cli():
    path = SHARED / "isic_cli_metadata" / "metadata.csv"
    assert int(read_metadata(path, "positive").table.target.sum()) == 6  # 3 melanoma + 3 other malignant
    dropped = read_metadata(path, "drop")
    assert len(dropped.table) == 24 and dropped.dropped == {"malignant, not melanoma": 3}


@needs_shared
def test_combined_sources_drop_repeated_images():
    m = read_metadata(
        [
            SHARED / "ham10000_csv" / "HAM10000_metadata.csv",
            SHARED / "isic2019_csv" / "ISIC_2019_Training_GroundTruth.csv",
        ]
    )
    assert m.formats == ["ham10000", "isic2019"]
    assert m.table.image_name.is_unique and m.dropped["listed in an earlier file"] == 10015


def test_current_archive_export_drops_indeterminate(tmp_path):
    path = csv(
        tmp_path,
        """
        isic_id,attribution,copyright_license,diagnosis_1,diagnosis_2,diagnosis_3,patient_id
        ISIC_1,a,CC-0,Malignant,Malignant melanocytic proliferations (Melanoma),"Melanoma Invasive",IP_1
        ISIC_2,a,CC-0,Benign,Benign melanocytic proliferations,Nevus,IP_1
        ISIC_3,a,CC-0,Indeterminate,,,IP_2
        ISIC_4,a,CC-0,,,,IP_2
        ISIC_5,a,CC-0,Malignant,Malignant epidermal proliferations,Basal cell carcinoma,IP_3
        """,
        "metadata.csv",
    )
    m = read_metadata(path)
    assert m.table.set_index("image_name").target.to_dict() == {"ISIC_1": 1, "ISIC_2": 0, "ISIC_5": 0}
    assert m.dropped == {"indeterminate or unlabeled": 2}
    assert m.table.diagnosis.tolist() == ["Melanoma Invasive", "Nevus", "Basal cell carcinoma"]


def test_older_archive_export_with_benign_malignant(tmp_path):
    path = csv(
        tmp_path,
        """
        isic_id,attribution,copyright_license,benign_malignant,diagnosis
        ISIC_1,a,CC-0,malignant,melanoma
        ISIC_2,a,CC-0,benign,nevus
        ISIC_3,a,CC-0,indeterminate/benign,nevus
        ISIC_4,a,CC-0,malignant,basal cell carcinoma
        """,
    )
    m = read_metadata(path, "drop")
    assert m.table.set_index("image_name").target.to_dict() == {"ISIC_1": 1, "ISIC_2": 0}
    assert m.dropped == {"indeterminate or unlabeled": 1, "malignant, not melanoma": 1}


def test_unknown_format_lists_known_formats_and_found_columns(tmp_path):
    path = csv(tmp_path, "file,label\na.jpg,1\n")
    with pytest.raises(MetadataError) as e:
        read_metadata(path)
    msg = str(e.value)
    assert f"Unknown metadata format in {path}" in msg and "Columns found: ['file', 'label']" in msg
    for fmt in ("isic2020", "isic_archive", "isic2019", "isic2017", "ham10000"):
        assert f"  - {fmt}:" in msg


def test_archive_without_diagnosis_column_is_a_missing_column_error(tmp_path):
    path = csv(tmp_path, "isic_id,attribution,copyright_license,sex\nISIC_1,a,CC-0,male\n")
    with pytest.raises(
        MetadataError, match=r"looks like ISIC Archive metadata \(has isic_id\) but has no diagnosis"
    ):
        read_metadata(path)


def test_target_outside_0_1_names_values_and_lines(tmp_path):
    path = csv(
        tmp_path, "image_name,patient_id,target\nISIC_1,P1,0\nISIC_2,P1,2\nISIC_3,P2,yes\nISIC_4,P2,1.0\n"
    )
    with pytest.raises(MetadataError) as e:
        read_metadata(path)
    assert (
        str(e.value)
        == f"{path}: column 'target' must be 0 or 1, found ['2', 'yes'] in 2 rows (lines [3, 4])."
    )


def test_duplicate_image_ids(tmp_path):
    path = csv(tmp_path, "image_name,patient_id,target\nISIC_1,P1,0\nISIC_1,P1,0\nISIC_2,P2,1\n")
    with pytest.raises(
        MetadataError, match=r"1 duplicate image ids, e.g. ISIC_1\. Each image must be listed once\."
    ):
        read_metadata(path)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "Metadata file is empty"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x80\x81\x82\xfe\xff", "not a readable CSV"),
    ],
)
def test_empty_and_binary_files(tmp_path, content, message):
    path = tmp_path / "metadata.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(MetadataError, match=message):
        read_metadata(path)


def test_missing_file(tmp_path):
    with pytest.raises(MetadataError, match="Metadata file not found"):
        read_metadata(tmp_path / "nope.csv")


def test_detect_format_from_columns():
    assert detect_format(["image_name", "patient_id", "target"]) == "isic2020"
    assert detect_format(["image", "MEL", "NV"]) == "isic2019"
    assert detect_format(["image_id", "melanoma", "seborrheic_keratosis"]) == "isic2017"
    assert detect_format(["lesion_id", "image_id", "dx"]) == "ham10000"
    assert detect_format(["isic_id", "attribution"]) == "isic_archive"
    assert detect_format(["foo"]) is None


def test_an_age_is_a_number_of_years_on_every_path(tmp_path):
    """The CSV reader and the service's fields share one rule: -1, 1e6, inf or text is not an age."""
    rows = ["image_name,patient_id,age_approx,target"]
    rows += [f"ISIC_{i},IP_1,{age},0" for i, age in enumerate(["45", "-1", "1e6", "inf", "old", "", "120"])]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    m = read_metadata(tmp_path / "m.csv")
    assert m.table["age_approx"].tolist()[:1] + m.table["age_approx"].tolist()[-1:] == [45, 120]
    assert m.table["age_approx"].isna().tolist() == [False, True, True, True, True, True, False]
    assert m.invalid_ages == 4  # the empty cell is simply missing
    assert age_in_years("45") == 45 and age_in_years(60) == 60 and age_in_years("") is None
    for bad in ("-1", 1e6, float("inf"), float("nan"), True, False, 10**400, "old", [45], {"a": 1}):
        with pytest.raises(ValueError):
            age_in_years(bad)


def test_isic2024_reads_only_used_columns_and_measurements_as_numbers(tmp_path, monkeypatch):
    """Reading 401,059 rows as 55 text columns peaked at 0.72-0.80 GB; only the used ones, with the
    measurements as numbers, at 0.63 GB (docs/performance.md). A cell that is not a number is missing."""
    import pandas as pd

    used = ["isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general", "tbp_lv_A"]
    used += ["tbp_lv_areaMM2", "iddx_1", "iddx_2", "iddx_3"]
    unused = ["tbp_tile_type", "tbp_lv_location", "iddx_full", "attribution"]
    rows = [
        ["ISIC_1", "1", "IP_1", "60", "male", "posterior torso", "20.5", "3", "Malignant"]
        + [
            "Malignant melanocytic proliferations (Melanoma)",
            "Melanoma in situ",
            "3D: white",
            "Back",
            "x",
            "H",
        ],
        ["ISIC_2", "0", "IP_1", "", "female", "", "n/a", "4.25", "Benign", "", "", "3D: XP", "Arm", "y", "H"],
    ]
    path = tmp_path / "train-metadata.csv"
    pd.DataFrame(rows, columns=used + unused).to_csv(path, index=False)
    asked = []
    read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: asked.append(k.get("usecols")) or read_csv(*a, **k))
    table = read_metadata(path).table
    assert sorted(asked[-1]) == sorted(used)
    assert table["target"].tolist() == [1, 0] and table["diagnosis"].tolist() == [
        "Melanoma in situ",
        "Benign",
    ]
    assert table["tbp_lv_areaMM2"].tolist() == [3.0, 4.25] and table["tbp_lv_A"].iloc[0] == 20.5
    assert pd.isna(table["tbp_lv_A"].iloc[1]) and pd.isna(table["age_approx"].iloc[1])
    assert table["anatom_site"].tolist() == ["posterior torso", ""] and "tbp_lv_location" not in table
