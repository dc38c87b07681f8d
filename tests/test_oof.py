"""oof.csv is out-of-fold by construction: each image is scored by the one fold model whose training
split excluded it, and fold runs that disagree on the split are refused."""

import pandas as pd
import pytest
import torch

from src.core.checkpoint import load_checkpoint, model_from_checkpoint
from src.data.splits import read_split, split_digest
from src.training.oof import OOFError, check_one_split

from helpers import run_script, tiny_train_args


@pytest.mark.slow
def test_every_score_comes_from_the_model_that_never_trained_on_it(demo_dir, tmp_path):
    out = tmp_path / "oof"
    overrides = [
        a for a in tiny_train_args(demo_dir, "unused", 1)[1:] if not a.startswith("--CHECKPOINT_DIR")
    ]
    r = run_script("src/training/oof.py", f"--out={out}", "--folds=3", "--workers=0", *overrides)
    assert r.returncode == 0, r.stderr
    oof = pd.read_csv(out / "oof.csv", dtype={"image_name": str})
    assert list(oof.columns) == ["image_name", "fold", "target", "logit", "probability"]
    assert len(oof) == 80 and oof["image_name"].is_unique  # every image once
    for k in range(3):
        run = out / f"fold{k}"
        split = read_split(run / "split.csv")
        trained_on = set(split.loc[split["split"] == "train", "image_name"])
        scored = oof[oof["fold"] == k]
        assert not trained_on & set(scored["image_name"])
        assert set(scored["image_name"]) == set(split.loc[split["split"] == "val", "image_name"])
        best = next(run.glob("best_model_epoch*.pth"))
        ckpt = load_checkpoint(best)
        assert ckpt["split_sha256"] == split_digest(run / "split.csv")
        # The logit really is fold k's model's: re-score two images with it.
        from src.data.transforms import load_input

        model = model_from_checkpoint(ckpt).eval()
        for _, row in scored.head(2).iterrows():
            x = load_input(str(demo_dir / f"{row['image_name']}.jpg"), ckpt["img_size"])
            with torch.no_grad():
                assert model(x[None]).item() == pytest.approx(row["logit"], abs=1e-4)
    # A second call collects the finished folds instead of training them again.
    again = run_script("src/training/oof.py", f"--out={out}", "--folds=3", "--workers=0", *overrides)
    assert again.returncode == 0 and again.stdout.count("collecting the finished run") == 3


def test_fold_runs_on_different_splits_are_refused():
    a = pd.DataFrame({"image_name": ["x", "y", "z"], "fold": [0, 1, 1], "split": ["val", "train", "train"]})
    b = a.assign(split=["train", "val", "val"])
    check_one_split([a, b])
    moved = b.assign(fold=[0, 1, 0])  # z validated by model 0 in one run, trained on in the other
    with pytest.raises(OOFError, match="another split"):
        check_one_split([a, moved])
    with pytest.raises(OOFError, match="validated on fold"):
        check_one_split([b, a])
