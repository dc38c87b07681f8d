"""Fuzz the context-model loader: mutate a trained model's tree text and load each mutant in a child.

    python tests/context_fuzz.py MODEL.json MUTANTS SEED

Run by tests/test_context_model_file.py in a fresh interpreter, so that its children are forked from
a process that never ran OpenMP (LightGBM's threads do not survive a fork). Each mutant is loaded
and scored in a forked child (a crash or a hang there cannot take this process down); a mutant that
loads is also scored by LightGBM itself, in another child, for comparison. Prints one JSON line per
mutant: {"mutation", "outcome": refused | finite | nonfinite | crash | hang, "reason",
"lightgbm": same | differs | failed | null}.
"""

import json
import sys
from pathlib import Path

import lightgbm as lgb  # imported here, used only in children: importing starts no OpenMP thread
import numpy as np

from src.core import metrics as M
from src.core.context_model import ContextError, ContextModel

from children import in_child
from helpers import patients_table

TREE_FIELDS = ["left_child", "right_child", "split_feature", "decision_type", "threshold", "leaf_value"]
TREE_FIELDS += ["num_leaves", "num_cat", "cat_boundaries", "cat_threshold", "is_linear"]
HEADER_FIELDS = ["num_tree_per_iteration", "num_class", "max_feature_idx", "tree_sizes", "version"]
VALUES = ["-1", "0", "1", "2", "3", "7", "-8", "2147483648", "-2147483649", "99999999999", "nan"]
VALUES += ["inf", "-inf", "1e308", "-1e308", "", "x", "0.5", "1e-40", "4294967296"]


def table_and_logits():
    table = patients_table(40, seed=7).drop(columns="target")
    table.loc[::5, "age_approx"] = np.nan
    table.loc[::7, "anatom_site"] = "palms/soles"  # a site the model never saw
    logits = np.random.default_rng(0).normal(size=len(table)) * 3
    logits[::9] = np.nan  # an image that could not be read
    return table, logits


def mutate_text(text: str, rng) -> tuple[str, str]:
    lines = text.split("\n")
    kind = rng.choice(["field", "field", "field", "header", "delete", "duplicate", "truncate"])
    if kind in ("field", "header"):
        names = TREE_FIELDS if kind == "field" else HEADER_FIELDS
        at = [i for i, line in enumerate(lines) if line.split("=")[0] in names]
        i = int(rng.choice(at))
        key, _, values = lines[i].partition("=")
        items = values.split(" ")
        j = int(rng.integers(len(items)))
        items[j] = str(rng.choice(VALUES)) if rng.random() < 0.6 else str(int(rng.integers(-12, 40)))
        lines[i] = f"{key}={' '.join(items)}"
        return f"{key}[{j}] = {items[j]!r}", "\n".join(lines)
    if kind == "truncate":
        cut = int(rng.integers(len(text)))
        return f"truncated at {cut}", text[:cut]
    i = int(rng.integers(len(lines)))
    if kind == "delete":
        return f"deleted line {i}", "\n".join(lines[:i] + lines[i + 1 :])
    return f"duplicated line {i}", "\n".join(lines[: i + 1] + lines[i:])


def load_and_score(path: str, table, logits) -> dict:
    try:
        model = ContextModel.load(path)
    except ContextError as e:
        return {"outcome": "refused", "reason": str(e)}
    margins = model.margins(table, logits if model.uses_image_score else None)
    p = M.calibrated(margins, model.temperature, model.bias)  # what model.probabilities gives
    finite = bool(np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all())
    return {"outcome": "finite" if finite else "nonfinite", "margins": margins}


def lightgbm_margins(boosters: list[str], x: np.ndarray) -> np.ndarray:
    # LightGBM locates trees by tree_sizes when given; without it, by their "Tree=" lines.
    texts = ["\n".join(s for s in b.split("\n") if not s.startswith("tree_sizes=")) for b in boosters]
    return np.mean([lgb.Booster(model_str=t).predict(x, raw_score=True) for t in texts], axis=0)


def main(model_path: str, mutants: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    body = json.loads(Path(model_path).read_text())
    work = Path(model_path).with_name("mutant.json")
    table, logits = table_and_logits()
    # Mutants change tree text only, never the feature settings: every one that loads gets these inputs.
    x = ContextModel.load(model_path).features_for(table, logits).to_numpy(np.float64)
    for _ in range(mutants):
        k = int(rng.integers(len(body["boosters"])))
        what, text = mutate_text(body["boosters"][k], rng)
        mutant = {**body, "boosters": [text if i == k else b for i, b in enumerate(body["boosters"])]}
        work.write_text(json.dumps(mutant))
        result = in_child(load_and_score, str(work), table, logits)
        row = {"mutation": f"booster {k}: {what}", "outcome": result["outcome"]}
        row |= {"reason": result.get("reason"), "lightgbm": None}
        if result["outcome"] == "finite":
            ref = in_child(lightgbm_margins, mutant["boosters"], x)
            if isinstance(ref, np.ndarray):
                row["lightgbm"] = (
                    "same" if np.allclose(ref, result["margins"], rtol=0, atol=1e-9) else "differs"
                )
            else:
                row["lightgbm"] = f"failed: {ref['outcome']}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
