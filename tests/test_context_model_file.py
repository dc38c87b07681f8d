"""A context-model file is data: any file either loads into a model whose risks are finite and equal
what LightGBM computes from the same trees, or is refused with one line. Every crafted file is made
here from a small model trained on generated patients (a few KB of trees)."""

import json
import os
import time

import lightgbm as lgb
import numpy as np
import pytest

from src.core.trees import Forest, TreeModelError
from src.data.splits import assign_folds
from src.training import context as C

from children import in_child
from helpers import patients_table, refusal_at_start_up, run_process, run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model file, its metadata table, image logits): a fused stage of 2 folds x 8 trees."""
    table = patients_table(150)
    logits = table["target"].to_numpy() * 1.5 + np.random.default_rng(1).normal(size=len(table))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "ROUNDS", 8)
        mp.setitem(C.PARAMS, "learning_rate", 0.3)
        model, _ = C.train_context(table, assign_folds(table, 2, 0), logits)
    path = tmp_path_factory.mktemp("context") / "model.json"
    model.save(path)
    return path, table, logits


def variant(trained, tmp_path, edit, name="crafted.json"):
    """The trained model's file with edit(body) applied (edit may return a new body or text)."""
    body = json.loads(trained[0].read_text())
    out = edit(body)
    path = tmp_path / name
    path.write_text(out if isinstance(out, str) else json.dumps(out if out is not None else body))
    return path


def set_tree_field(body, key, index, value, tree=0, booster=0):
    """Change item `index` of `key` in tree `tree` of booster `booster` (its LightGBM text)."""
    lines = body["boosters"][booster].split("\n")
    start = lines.index(f"Tree={tree}")
    i = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{key}="))
    items = lines[i].split("=", 1)[1].split(" ")
    items[index] = str(value)
    lines[i] = f"{key}={' '.join(items)}"
    body["boosters"][booster] = "\n".join(lines)


def tree_arrays(body, tree=0):
    lines = body["boosters"][0].split("\n")
    start = lines.index(f"Tree={tree}")
    get = {line.split("=")[0]: line.split("=", 1)[1] for line in lines[start : start + 20] if "=" in line}
    return [int(v) for v in get["left_child"].split()], [int(v) for v in get["right_child"].split()]


def point_back_to_an_ancestor(body):
    """A split whose child is its own grandparent's child: LightGBM would loop on it forever."""
    left, right = tree_arrays(body)
    parent = {c: p for p, kids in enumerate(zip(left, right, strict=True)) for c in kids if c >= 0}
    node = next(n for n in parent if parent[n] != 0)
    set_tree_field(body, "left_child", node, parent[node])


def test_forest_equals_lightgbm_on_real_and_odd_inputs(trained):
    path, table, logits = trained
    model = C.ContextModel.load(path)
    x = model.features_for(table, logits).to_numpy(np.float64)
    rng = np.random.default_rng(0)
    odd = x[rng.integers(0, len(x), 3000)]
    kinds = rng.random(odd.shape)
    odd[kinds < 0.1] = np.nan
    odd[(kinds >= 0.1) & (kinds < 0.15)] = -3.0  # also a negative category
    odd[(kinds >= 0.15) & (kinds < 0.2)] = 1e-40  # LightGBM reads it as zero
    odd[(kinds >= 0.2) & (kinds < 0.22)] = 1e12  # a category code beyond any bitset
    odd[(kinds >= 0.22) & (kinds < 0.24)] = 2.7  # a fractional category code
    odd[(kinds >= 0.24) & (kinds < 0.26)] = -0.5  # LightGBM casts it to category 0
    body = json.loads(path.read_text())
    assert any("cat_threshold=" in b for b in body["boosters"])  # the site split is categorical
    for text, forest in zip(body["boosters"], model.boosters, strict=True):
        booster = lgb.Booster(model_str=text)
        for rows in (x, odd):
            np.testing.assert_allclose(
                forest.raw_score(rows), booster.predict(rows, raw_score=True), atol=1e-12
            )
        np.testing.assert_allclose(forest.importance(), booster.feature_importance("gain"), rtol=1e-5)


def test_crafted_trees_are_refused_with_the_reason(trained, tmp_path):
    cases = {
        "a child index is out of range": lambda b: set_tree_field(b, "left_child", 0, 99),
        "do not form one tree": point_back_to_an_ancestor,
        "num_tree_per_iteration must be 1": lambda b: b.update(
            boosters=[
                s.replace("num_tree_per_iteration=1", "num_tree_per_iteration=0") for s in b["boosters"]
            ]
        ),
        "split feature index is out of range": lambda b: set_tree_field(b, "split_feature", 0, 500),
        "a leaf value is not a finite margin": lambda b: set_tree_field(b, "leaf_value", 1, "nan"),
        "num_class must be 1": lambda b: b.update(
            boosters=[s.replace("num_class=1", "num_class=3") for s in b["boosters"]]
        ),
        "no 'end of trees' line": lambda b: b["boosters"].__setitem__(0, b["boosters"][0][:900]),
        "decision_type is not one LightGBM writes": lambda b: set_tree_field(b, "decision_type", 0, 12),
    }
    for message, edit in cases.items():
        with pytest.raises(C.ContextError, match="cannot load context model") as e:
            C.ContextModel.load(variant(trained, tmp_path, edit))
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_tree_sizes_are_not_trusted(trained, tmp_path):
    """LightGBM aborts on a tree_sizes line that does not match the trees; here it is not read."""
    path, table, logits = trained

    def wrong_sizes(body):
        body["boosters"] = [
            "\n".join("tree_sizes=5 5 5" if s.startswith("tree_sizes=") else s for s in b.split("\n"))
            for b in body["boosters"]
        ]

    loaded = C.ContextModel.load(variant(trained, tmp_path, wrong_sizes))
    np.testing.assert_array_equal(
        loaded.margins(table, logits), C.ContextModel.load(path).margins(table, logits)
    )


BAD_FILES = {
    "not a context model": lambda b: [1, 2],
    "'boosters' must be a list of texts": lambda b: b.update(boosters=[1, 2]),
    "1 to 100 boosters": lambda b: b.update(boosters=[]),
    "booster 0 uses other features": lambda b: b.update(
        boosters=[s.replace("feature_names=age ", "feature_names=years ", 1) for s in b["boosters"]]
    ),
    "not the one these settings compute": lambda b: b.update(features=b["features"][:-1]),
    "temperature = nan is not": lambda b: b.update(temperature=float("nan")),
    "temperature = 0 is not": lambda b: b.update(temperature=0),
    "temperature = '1.0' is not": lambda b: b.update(temperature="1.0"),
    "threshold = 2 is not": lambda b: b.update(threshold=2),
    "bias = inf is not": lambda b: b.update(bias=float("inf")),
    "'sites' must be a list of texts": lambda b: b.update(sites="torso"),
    "'uses_image_score' must be true or false": lambda b: b.update(uses_image_score="yes"),
    "its fields must be exactly": lambda b: b.update(code="import os"),
    "not valid JSON": lambda b: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("message", list(BAD_FILES))
def test_loose_files_are_refused_with_one_line(trained, tmp_path, message):
    with pytest.raises(C.ContextError) as e:
        C.ContextModel.load(variant(trained, tmp_path, BAD_FILES[message]))
    text = str(e.value)
    assert "\n" not in text and len(text) < 600, text
    if message != "not valid JSON":
        assert message in text, text


def test_text_that_cannot_be_echoed_is_refused(trained, tmp_path):
    path = variant(trained, tmp_path, lambda b: b.update(info={"note": "\ud800"}))  # written as an escape
    with pytest.raises(C.ContextError, match="surrogate"):
        C.ContextModel.load(path)


@pytest.mark.slow
def test_huge_files_and_fifos_are_refused_before_reading(tmp_path):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)  # 1 GB, sparse: costs no disk
    started = time.monotonic()
    with pytest.raises(C.ContextError, match="larger than"):
        C.ContextModel.load(huge)
    assert time.monotonic() - started < 2
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    answer = in_child(load_refusal, fifo)  # in a child: opening a FIFO for reading would wait forever
    assert answer["outcome"] == "refused" and "is not a regular file" in answer["reason"], answer


def load_refusal(path) -> dict:
    try:
        C.ContextModel.load(path)
    except C.ContextError as e:
        return {"outcome": "refused", "reason": str(e)}
    return {"outcome": "loaded"}


def test_commands_stop_with_one_error_line(trained, trained_run, demo_dir, tmp_path):
    crafted = variant(trained, tmp_path, point_back_to_an_ancestor)
    r = run_script(
        "src/inference/predict.py", "--checkpoint", trained_run[1], demo_dir / "metadata.csv",
        "--context", crafted, "--out", tmp_path / "p.csv",
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("error: cannot load context model"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.csv").exists()
    assert "do not form one tree" in refusal_at_start_up(trained_run[1], CONTEXT_MODEL=crafted)


@pytest.mark.slow
def test_fuzzed_tree_text_never_crashes_hangs_or_gives_a_non_finite_risk(trained):
    """300 mutants of the trained model's tree text (indices, counts, sizes, thresholds, deleted or
    repeated lines, truncation), each loaded and scored in its own child process."""
    r = run_process("tests/context_fuzz.py", trained[0], 300, 0)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    outcomes = {row["outcome"] for row in rows}
    assert len(rows) == 300 and outcomes <= {"refused", "finite"}, [
        r for r in rows if r["outcome"] not in ("refused", "finite")
    ][:5]
    loaded = [row for row in rows if row["outcome"] == "finite"]
    assert 30 <= len(loaded) <= 270  # both kinds of mutant were exercised
    assert not [row for row in loaded if row["lightgbm"] == "differs"]
    assert all("\n" not in row["reason"] for row in rows if row["outcome"] == "refused")


def test_forest_refuses_what_is_not_text():
    with pytest.raises(TreeModelError):
        Forest.parse(b"tree\n")
