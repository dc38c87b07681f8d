"""LightGBM's text model, read and evaluated in numpy: a context-model file is data, never code.

LightGBM's own parser and predictor trust the tree structure they are given: a child index out of
range crashes the process, a child that points back to an ancestor loops forever, a bad
`num_tree_per_iteration` or `tree_sizes` aborts it. A model file may come from another site, so the
context stage never hands a file's text to LightGBM. `Forest.parse` reads each tree, checks it (one
binary tree reached from its root, every index in range, every number finite, only the features the
header names) and `Forest.raw_score` evaluates it the way LightGBM's `Tree::GetLeaf` does
(include/LightGBM/tree.h: NumericalDecision, CategoricalDecision), vectorised over rows and trees.
Training still uses LightGBM; tests check that both give the same margins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from src.errors import ProjectError

MAX_LEAVES = 4096  # per tree; the context stage grows 7
MAX_TREES = 100_000  # per model; the context stage grows 600
MAX_FEATURES = 10_000
MAX_LEAF_VALUE = 1e6  # a binary model's leaves are a few units; beyond this it is not a model
ZERO = 1e-35  # LightGBM's kZeroThreshold: inputs this close to 0 are 0, and "zero" means missing
CHUNK = 1 << 18  # rows x (nodes + leaves) evaluated at once: arrays of about 1 MB stay in cache

_INT = r"-?[0-9]{1,10}"
_FLOAT = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?|[-+]?inf|nan"
_INTS = re.compile(rf"(?:{_INT})(?: (?:{_INT}))*", re.ASCII)
_FLOATS = re.compile(rf"(?:{_FLOAT})(?: (?:{_FLOAT}))*", re.ASCII | re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_]{1,200}", re.ASCII)


class TreeModelError(ProjectError, ValueError):
    """The text is not a binary LightGBM model that can be evaluated safely; says why."""


@dataclass
class Forest:
    """One LightGBM model (binary objective, one tree per iteration) as flat arrays.

    The internal nodes of all trees are numbered 0..N-1 and their leaves N..N+L-1; `left` and
    `right` hold these numbers, and each tree starts at `roots[t]` (a leaf, for a one-leaf tree)."""

    text: str
    feature_names: list[str]
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    nan_left: np.ndarray  # where NaN goes: where 0 goes for missing type 0, else the default side
    zero_is_missing: np.ndarray  # missing type 1: an input of 0 follows the default side
    categorical: np.ndarray
    cat_start: np.ndarray  # first bitset word of a categorical node in cat_bits
    cat_words: np.ndarray  # and how many words it has
    cat_bits: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray
    gain: np.ndarray  # split gain of each internal node (feature importance)
    depth: int

    @classmethod
    def parse(cls, text: str) -> Forest:
        """Check and read LightGBM's model_to_string() output; TreeModelError says what is wrong."""
        if not isinstance(text, str):
            raise TreeModelError("a tree model must be text")
        header, blocks = _sections(text)
        names = _read_header(header)
        trees = [_read_tree(block, k, len(names)) for k, block in enumerate(blocks)]
        return cls(text=text, feature_names=names, **_pack(trees))

    def raw_score(self, x) -> np.ndarray:
        """The model's margin for each row of x (n, features): LightGBM's predict(raw_score=True)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise TreeModelError(f"expected {len(self.feature_names)} features, got shape {x.shape}")
        x = np.where(np.abs(x) <= ZERO, 0.0, x)  # LightGBM drops near-zero inputs as zeros
        step = max(1, CHUNK // (len(self.feature) + len(self.leaf_value)))
        return np.concatenate([self._chunk(x[i : i + step]) for i in range(0, len(x), step)] or [[]])

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        """Every node's decision for every row at once, then `depth` lookups per tree."""
        n, inner, width = len(x), len(self.feature), len(self.feature) + len(self.leaf_value)
        step = np.empty((n, width), dtype=np.int32)  # where each node sends each row
        np.copyto(step[:, :inner], self.right)
        np.copyto(step[:, :inner], self.left, where=self._goes_left(np.take(x, self.feature, axis=1)))
        step[:, inner:] = np.arange(inner, width)  # a leaf keeps the row
        node = np.tile(self.roots.astype(np.int32), (n, 1))
        offset = (np.arange(n, dtype=np.int32) * width)[:, None]
        flat = step.ravel()
        for _ in range(self.depth):  # every path reaches a leaf within `depth` splits (checked)
            node = flat.take(node + offset)
        return self.leaf_value[node - inner].sum(axis=1)

    def _goes_left(self, v: np.ndarray) -> np.ndarray:
        """(rows, nodes) values at each node's split feature -> whether the row goes left.

        NumericalDecision: NaN is missing for missing type 2, else it counts as 0; a missing value
        (NaN for type 2, 0 for type 1) follows the default direction, anything else `v <= threshold`."""
        left = v <= self.threshold
        np.copyto(left, self.nan_left, where=np.isnan(v))
        if self.zero_is_missing.any():
            np.copyto(left, self.default_left, where=(v == 0) & self.zero_is_missing)
        cat = np.flatnonzero(self.categorical)
        if len(cat):  # CategoricalDecision: the value cast to int (toward 0) is in the node's set
            c = v[:, cat]
            ok = (c > -1) & (c < 2**31)  # NaN, a cast below 0, or one that overflows go right
            code = np.where(ok, c, 0).astype(np.int64)
            inside = ok & (code // 32 < self.cat_words[cat])
            bits = self.cat_bits[np.where(inside, self.cat_start[cat] + code // 32, 0)]
            left[:, cat] = inside & (((bits >> (code % 32)) & 1) == 1)
        return left

    def importance(self) -> np.ndarray:
        """Total split gain of each feature (LightGBM's feature_importance("gain"))."""
        return np.bincount(self.feature, weights=self.gain, minlength=len(self.feature_names))


def _sections(text: str) -> tuple[list[str], list[list[str]]]:
    """The header lines and each tree's lines; everything after "end of trees" is LightGBM's
    summary (importances, parameters), which prediction does not use."""
    lines = text.split("\n")
    if "end of trees" not in (line.strip() for line in lines):
        raise TreeModelError("no 'end of trees' line (a truncated or foreign model)")
    header, blocks = [], []
    for raw in lines:
        line = raw.strip()
        if line == "end of trees":
            break
        if line.startswith("Tree="):
            if line != f"Tree={len(blocks)}":
                raise TreeModelError(f"tree {len(blocks)} is labelled {line[:40]!r}")
            blocks.append([])
        elif line:
            (blocks[-1] if blocks else header).append(line)
    if not blocks:
        raise TreeModelError("the model has no trees")
    if len(blocks) > MAX_TREES:
        raise TreeModelError(f"{len(blocks):,} trees, more than {MAX_TREES:,}")
    return header, blocks


def _fields(lines: list[str], where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            if line == "average_output":  # a random forest: outputs averaged, not summed
                raise TreeModelError("averaged (random forest) models are not supported")
            if where == "header" and line == "tree" and not fields:
                continue
            raise TreeModelError(f"{where}: unexpected line {line[:40]!r}")
        if key in fields:
            raise TreeModelError(f"{where}: '{key[:40]}' given twice")
        fields[key] = value
    return fields


def _read_header(lines: list[str]) -> list[str]:
    if not lines or lines[0] != "tree":
        raise TreeModelError("not a LightGBM text model (no 'tree' line first)")
    f = _fields(lines, "header")
    for key, expected in (("version", "v4"), ("num_class", "1"), ("num_tree_per_iteration", "1")):
        if f.get(key) != expected:
            raise TreeModelError(f"header: {key} must be {expected}, not {str(f.get(key))[:40]!r}")
    if not f.get("objective", "").startswith("binary"):
        raise TreeModelError("header: only binary models are supported")
    names = f.get("feature_names", "").split(" ")
    if not 0 < len(names) <= MAX_FEATURES or not all(_NAME.fullmatch(n) for n in names):
        raise TreeModelError("header: feature_names must be 1 to 10,000 plain names")
    if f.get("max_feature_idx") != str(len(names) - 1):
        raise TreeModelError(f"header: max_feature_idx does not match the {len(names)} feature names")
    return names


def _numbers(f: dict, key: str, count: int, where: str, kind=int) -> np.ndarray:
    text = f.get(key, "")
    if count == 0 and text == "":
        return np.zeros(0, dtype=np.int64 if kind is int else np.float64)
    if not (_INTS if kind is int else _FLOATS).fullmatch(text):
        raise TreeModelError(f"{where}: '{key}' is missing or not a list of numbers")
    values = np.array(text.split(" "), dtype=np.int64 if kind is int else np.float64)
    if len(values) != count:
        raise TreeModelError(f"{where}: '{key}' has {len(values)} values, expected {count}")
    return values


def _read_tree(lines: list[str], k: int, n_features: int) -> dict:
    where = f"tree {k}"
    f = _fields(lines, where)
    leaves, n_cat = (_numbers(f, key, 1, where)[0] for key in ("num_leaves", "num_cat"))
    if not 1 <= leaves <= MAX_LEAVES or not 0 <= n_cat < leaves:
        raise TreeModelError(f"{where}: num_leaves {leaves} or num_cat {n_cat} out of range")
    if f.get("is_linear", "0") != "0":
        raise TreeModelError(f"{where}: linear trees are not supported")
    n = int(leaves) - 1
    tree = {
        "feature": _numbers(f, "split_feature", n, where),
        "threshold": _numbers(f, "threshold", n, where, float),
        "decision": _numbers(f, "decision_type", n, where),
        "left": _numbers(f, "left_child", n, where),
        "right": _numbers(f, "right_child", n, where),
        "leaf_value": _numbers(f, "leaf_value", n + 1, where, float),
        "gain": _numbers(f, "split_gain", n, where, float) if "split_gain" in f else np.zeros(n),
    }
    tree["depth"] = _check_structure(tree["left"], tree["right"], n + 1, where)
    _check_values(tree, n_features, where)
    tree["cat_bounds"], tree["cat_bits"] = _categories(f, tree, int(n_cat), where)
    return tree


def _check_structure(left: np.ndarray, right: np.ndarray, leaves: int, where: str) -> int:
    """One binary tree: from node 0, every internal node and every leaf is reached exactly once.
    Returns its depth (the longest path, in splits), which bounds evaluation."""
    children = np.concatenate([left, right])
    internal, leaf = children[children >= 0], ~children[children < 0]
    if (internal == 0).any() or (internal >= leaves - 1).any() or (leaf >= leaves).any():
        raise TreeModelError(f"{where}: a child index is out of range")
    if leaves == 1:
        return 0
    nodes, leaf_ids, level, depth = [np.zeros(1, np.int64)], [], np.zeros(1, np.int64), 0
    while len(level) and sum(map(len, nodes)) <= leaves - 1:  # more would be a cycle
        depth += 1
        step = np.concatenate([left[level], right[level]])
        leaf_ids.append(~step[step < 0])
        level = step[step >= 0]
        nodes.append(level)
    nodes, leaf_ids = np.concatenate(nodes), np.concatenate(leaf_ids)
    if not (
        len(nodes) == len(np.unique(nodes)) == leaves - 1
        and len(leaf_ids) == len(np.unique(leaf_ids)) == leaves
    ):
        raise TreeModelError(f"{where}: its children do not form one tree")
    return depth


def _check_values(tree: dict, n_features: int, where: str) -> None:
    if ((tree["feature"] < 0) | (tree["feature"] >= n_features)).any():
        raise TreeModelError(f"{where}: a split feature index is out of range")
    decision = tree["decision"]
    if ((decision < 0) | (decision > 11) | ((decision >> 2) == 3)).any():
        raise TreeModelError(f"{where}: a decision_type is not one LightGBM writes")
    if np.isnan(tree["threshold"]).any() or not np.isfinite(tree["gain"]).all():
        raise TreeModelError(f"{where}: a threshold or split gain is not a number")
    if not (np.abs(tree["leaf_value"]) <= MAX_LEAF_VALUE).all():  # also refuses NaN and inf
        raise TreeModelError(f"{where}: a leaf value is not a finite margin")


def _categories(f: dict, tree: dict, n_cat: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Bitset boundaries and words of the categorical splits (a node's threshold indexes them)."""
    is_cat = (tree["decision"] & 1) == 1
    if n_cat == 0:
        if is_cat.any():
            raise TreeModelError(f"{where}: a categorical split but num_cat=0")
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bounds = _numbers(f, "cat_boundaries", n_cat + 1, where)
    words = _numbers(f, "cat_threshold", int(bounds[-1]), where) if bounds[-1] > 0 else np.zeros(0)
    if bounds[0] != 0 or (np.diff(bounds) < 0).any() or ((words < 0) | (words >= 2**32)).any():
        raise TreeModelError(f"{where}: cat_boundaries or cat_threshold out of range")
    index = tree["threshold"][is_cat]
    if ((index < 0) | (index >= n_cat) | (index != np.floor(index))).any():
        raise TreeModelError(f"{where}: a categorical split names no category set")
    return bounds, words.astype(np.int64)


def _category_words(tree: dict, word_base: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each categorical node's bitset starts in the flat word array, and its length."""
    is_cat = (tree["decision"] & 1) == 1
    bounds = tree["cat_bounds"]
    index = np.where(is_cat, tree["threshold"], 0).astype(np.int64)
    after = np.minimum(index + 1, len(bounds) - 1)
    return np.where(is_cat, bounds[index] + word_base, 0), np.where(is_cat, bounds[after] - bounds[index], 0)


def _pack(trees: list[dict]) -> dict:
    """All trees in flat arrays: internal nodes 0..N-1, then leaves N..N+L-1."""
    node_base = np.cumsum([0] + [len(t["feature"]) for t in trees])
    leaf_base = np.cumsum([0] + [len(t["leaf_value"]) for t in trees]) + node_base[-1]
    word_base = np.cumsum([0] + [len(t["cat_bits"]) for t in trees])

    def joined(key: str) -> np.ndarray:
        return np.concatenate([t[key] for t in trees])

    def child(key: str) -> np.ndarray:
        return np.concatenate(
            [
                np.where(t[key] >= 0, t[key] + node_base[k], ~t[key] + leaf_base[k])
                for k, t in enumerate(trees)
            ]
        )

    cats = [_category_words(t, word_base[k]) for k, t in enumerate(trees)]
    decision = joined("decision")
    bits = joined("cat_bits")
    return {
        "roots": np.array([node_base[k] if len(t["feature"]) else leaf_base[k] for k, t in enumerate(trees)]),
        "feature": joined("feature"),
        "threshold": joined("threshold"),
        "default_left": (decision & 2) == 2,
        "nan_left": np.where((decision >> 2) & 3 == 0, joined("threshold") >= 0, (decision & 2) == 2),
        "zero_is_missing": (decision >> 2) & 3 == 1,
        "categorical": (decision & 1) == 1,
        "cat_start": np.concatenate([c[0] for c in cats]),
        "cat_words": np.concatenate([c[1] for c in cats]),
        "cat_bits": bits if len(bits) else np.zeros(1, dtype=np.int64),
        "left": child("left"),
        "right": child("right"),
        "leaf_value": joined("leaf_value"),
        "gain": joined("gain"),
        "depth": max(t["depth"] for t in trees),
    }
