"""Prediction over an archive: parts written as they are scored, an interrupted run resumes without
scoring its finished parts again, and torchrun processes share the parts and write the same file."""

import numpy as np
import pandas as pd
import pytest

from src.data.labels import DataError
from src.inference import predict as P
from src.inference.archive import Parts

from helpers import finished, run_script, torchrun


def predict_args(checkpoint, source, out, *extra):
    return [
        "src/inference/predict.py",
        "--checkpoint",
        checkpoint,
        source,
        "--out",
        out,
        "--workers",
        0,
        "--batch-size",
        8,
        "--part-rows",
        12,
        *extra,
    ]


def test_parts_of_another_prediction_are_refused_and_a_damaged_part_is_scored_again(tmp_path):
    parts = Parts(tmp_path / "p.csv", {"model": "a", "inputs": "x"}, rows=30, part_rows=12)
    parts.open(0)
    assert parts.count == 3 and parts.todo(0, 1) == [0, 1, 2] and parts.todo(1, 2) == [1]
    parts.write(0, np.arange(24.0).reshape(2, 12), [""] * 12, ["blurred"] + [""] * 11)  # two models
    parts.write(2, np.full((2, 6), np.nan), ["not found"] * 6, [""] * 6)
    assert parts.todo(0, 1) == [1] and parts.read(2)[1].tolist() == ["not found"] * 6
    assert parts.read(0)[0].shape == (2, 12) and parts.read(0)[2][0] == "blurred"
    parts.path(2).write_bytes(b"PK\x03\x04 damaged")
    parts.write(1, np.arange(5.0), [""] * 5, [""] * 5)  # a part of the wrong shape is not trusted either
    assert parts.todo(0, 1) == [1, 2]
    with pytest.raises(DataError, match="missing"):
        parts.all_scores()
    (parts.folder / ".part-000001.npz.abc.tmp").write_bytes(b"half")  # what a killed writer leaves
    parts.open(0)  # the same prediction, resumed
    assert not list(parts.folder.glob("*.tmp"))
    other = Parts(tmp_path / "p.csv", {"model": "b", "inputs": "x"}, rows=30, part_rows=12)
    with pytest.raises(DataError, match="another prediction"):
        other.open(0)
    parts.remove()
    assert not parts.folder.exists()


@pytest.mark.slow
def test_an_interrupted_prediction_resumes_and_writes_what_one_run_writes(
    trained_run, demo_dir, tmp_path, monkeypatch
):
    _, best = trained_run
    whole = tmp_path / "whole.csv"
    r = run_script(*predict_args(best, demo_dir, whole))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "whole.csv.parts").exists()  # removed once the output is written
    scored, write = [], Parts.write

    def interrupted_after_two_parts(self, k, *scores):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(k)
        write(self, k, *scores)

    monkeypatch.setattr(Parts, "write", interrupted_after_two_parts)
    resumed = tmp_path / "resumed.csv"
    assert P.main([str(a) for a in predict_args(best, demo_dir, resumed)[1:]]) == 130
    assert not resumed.exists() and sorted(
        p.name for p in (tmp_path / "resumed.csv.parts").glob("*.npz")
    ) == [
        "part-000000.npz",
        "part-000001.npz",
    ]
    monkeypatch.setattr(Parts, "write", write)
    r = run_script(*predict_args(best, demo_dir, resumed))
    assert r.returncode == 0, r.stderr
    assert "resuming: 2 of 7 parts already scored" in r.stdout  # 80 images, 12 a part
    assert resumed.read_bytes() == whole.read_bytes()
    table = pd.read_csv(resumed)
    assert len(table) == 80 and table["probability"].between(0, 1).all()
    r = run_script(*predict_args(best, demo_dir / "metadata.csv", tmp_path / "whole.csv"))
    assert r.returncode == 0, r.stderr  # another input under the same name: a new prediction


@pytest.mark.slow
def test_a_sharded_prediction_writes_what_one_process_writes(trained_run, demo_dir, tmp_path):
    _, best = trained_run
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    r = run_script(*predict_args(best, demo_dir / "metadata.csv", one))
    assert r.returncode == 0, r.stderr
    stdout = finished(
        torchrun(predict_args(best, demo_dir / "metadata.csv", two), "--standalone", "--nproc_per_node=2")
    )
    assert stdout.count("images predicted") == 1  # rank 0 writes and reports
    assert two.read_bytes() == one.read_bytes() and not (tmp_path / "two.csv.parts").exists()
