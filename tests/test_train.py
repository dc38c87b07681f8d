"""train.py as a user runs it: outputs, resume after a kill, NaN stop, Ctrl-C, guards, and 2-process DDP."""

import json
import os
import signal
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from src.core.checkpoint import load_checkpoint, load_model, save_checkpoint

from helpers import (
    HANG_TIMEOUT_S,
    ROOT,
    file_size_limit,
    finished,
    free_port,
    run_process,
    run_script,
    tiny_train_args,
    torchrun,
)
from warm_process import WarmProcess

EPOCH_KEYS = {
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_auc",
    "val_sensitivity",
    "val_specificity",
    "val_pauc",
    "lr",
    "seconds",
    "train_images_per_s",
    "skipped_files",
    "skipped_examples",
}
TIMING_KEYS = {"seconds", "train_images_per_s"}


def tiny_args(demo_dir, out, epochs=2, *extra):
    return tiny_train_args(demo_dir, out, epochs, *extra)


def history(out):
    return json.loads((out / "training_history.json").read_text())


@pytest.mark.slow
def test_tiny_run_writes_checkpoints_history_and_split(demo_dir, tmp_path):
    out = tmp_path / "run"
    r = run_script(*tiny_args(demo_dir, out, 2))
    assert r.returncode == 0, r.stderr
    assert "Device: cpu" in r.stdout and "Train Loss:" in r.stdout and "pAUC(TPR>=0.8):" in r.stdout
    h = history(out)
    assert [e["epoch"] for e in h["epochs"]] == [1, 2] and set(h["epochs"][0]) == EPOCH_KEYS
    assert h["config"]["IMG_SIZE"] == 32 and h["best_epoch"] in (1, 2) and h["skipped_files"] == 0
    assert h["processes"] == 1 and h["global_batch"] == 16
    best = out / h["best_checkpoint"]
    assert sorted(p.name for p in out.glob("*.pth")) == sorted([best.name, "best.pth", "last.pth"])
    assert (out / "best.pth").read_bytes() == best.read_bytes()  # the stable name of the best epoch
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["img_size"] == 32 and ckpt["arch"] == "resnet18" and ckpt["config"]["PRETRAINED"] is False
    assert ckpt["metrics"]["val_auc"] == h["best_val_auc"] and "torch" in ckpt["versions"]
    last = load_checkpoint(out / "last.pth")
    assert {"optimizer", "scheduler", "rng", "history"} <= set(last)
    split = (out / "split.csv").read_text().splitlines()
    assert split[0] == "image_name,group,group_kind,merged_groups,target,fold,split" and len(split) == 81


@pytest.mark.slow
def test_unreadable_image_is_skipped_and_counted(demo_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    (data / "ISIC_9000005.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run_script(*tiny_args(data, tmp_path / "run", 1))
    assert r.returncode == 0, r.stderr
    e = history(tmp_path / "run")["epochs"][0]
    assert e["skipped_files"] == 1 and e["skipped_examples"] == ["ISIC_9000005"]


def wait_for_epochs(out, n, proc, timeout=HANG_TIMEOUT_S):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(history(out)["epochs"]) >= n:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"run ended or stalled before epoch {n}: {proc.poll()}")


def start(args):
    """A real training process, to kill or interrupt (started from the fork server: tests/warm_process.py)."""
    return WarmProcess(*args, cwd=ROOT)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_history(demo_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_script(*tiny_args(demo_dir, full, 3)).returncode == 0
    proc = start(tiny_args(demo_dir, killed, 3))
    wait_for_epochs(killed, 1, proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    done_before = len(history(killed)["epochs"])
    r = run_script(*tiny_args(demo_dir, killed, 3, "--RESUME=True"))
    assert r.returncode == 0, r.stderr
    assert f"Resuming after epoch {done_before} of 3" in r.stdout
    a, b = history(full)["epochs"], history(killed)["epochs"]
    assert len(a) == len(b) == 3
    for ea, eb in zip(a, b, strict=True):
        for key in EPOCH_KEYS - TIMING_KEYS:
            assert ea[key] == pytest.approx(eb[key], rel=1e-6, abs=1e-9), (ea["epoch"], key)


@pytest.mark.slow
def test_negative_sampling_trains_on_every_melanoma_and_as_many_fresh_benign_images(demo_dir, tmp_path):
    out = tmp_path / "run"
    r = run_script(*tiny_args(demo_dir, out, 1, "--NEGATIVES_PER_POSITIVE=1"))
    assert r.returncode == 0, r.stderr
    split = pd.read_csv(out / "split.csv")
    melanoma = int(((split["split"] == "train") & (split["target"] == 1)).sum())
    assert f"each epoch: all {melanoma} melanoma and {melanoma} fresh benign images" in r.stdout
    assert "(pos_weight 1.0)" in r.stdout  # of what an epoch holds, not of the whole split
    assert history(out)["config"]["NEGATIVES_PER_POSITIVE"] == 1


@pytest.mark.slow
def test_nan_loss_stops_with_message(demo_dir, tmp_path):
    r = run_script(*tiny_args(demo_dir, tmp_path / "run", 2, "--LEARNING_RATE=1e30", "--WARMUP_EPOCHS=0"))
    assert r.returncode == 1
    assert "error: the training loss became nan" in r.stderr and "no checkpoint was written" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_nan_after_a_good_epoch_keeps_the_last_good_checkpoint(demo_dir, tmp_path):
    out = tmp_path / "run"
    assert run_script(*tiny_args(demo_dir, out, 1)).returncode == 0
    # Poison the weights the resumed run continues from, so its next epoch diverges.
    ckpt = load_checkpoint(out / "last.pth")
    ckpt["model_state"]["backbone.fc.weight"].fill_(float("nan"))
    save_checkpoint(ckpt, out / "last.pth")

    def outputs():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.name != "run.lock"}

    before = outputs()
    r = run_script(*tiny_args(demo_dir, out, 2, "--RESUME=True"))
    assert r.returncode == 1 and "the training loss became nan in epoch 2" in r.stderr
    assert f"the last good checkpoint, {out / 'last.pth'}, is intact" in r.stderr
    assert outputs() == before  # nothing overwritten


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_with_last_checkpoint(demo_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(tiny_args(demo_dir, out, 50))
    wait_for_epochs(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted:" in err and "holds the last finished epoch; continue with --RESUME=True" in err
    assert "Traceback" not in err
    assert load_checkpoint(out / "last.pth")["epoch"] >= 1


def test_existing_run_is_not_overwritten(demo_dir, trained_run):
    out, _ = trained_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run_script(*tiny_args(demo_dir, out, 1))
    assert r.returncode == 1 and "already holds a run (last.pth)" in r.stderr and "--RESUME=True" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_no_data_explains_how_to_get_it_and_the_demo(tmp_path):
    r = run_process("src/training/train.py", f"--CHECKPOINT_DIR={tmp_path / 'c'}", cwd=tmp_path)
    assert r.returncode == 1 and "No ISIC data found" in r.stderr
    assert "isic image download" in r.stderr and "python src/training/train.py --demo" in r.stderr


@pytest.mark.slow
def test_two_processes_on_one_node_or_on_two_nodes_train_the_same_and_see_all_validation(demo_dir, tmp_path):
    """docs/training.md's recipes: torchrun on one machine, and on two machines (here two "nodes" on
    localhost, each one process, meeting at a static rendezvous) give the same run."""
    out, nodes = tmp_path / "ddp", tmp_path / "nodes"
    args = tiny_args(demo_dir, out, 2, "--BATCH_SIZE=8")
    stdout = finished(torchrun(args, "--standalone", "--nproc_per_node=2"))
    assert "processes: 2" in stdout and stdout.count("Epoch 2/2") == 1  # rank 0 alone prints
    h = history(out)
    assert h["processes"] == 2 and h["global_batch"] == 16  # BATCH_SIZE=8 per process
    port = free_port()
    launch = ["--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"]
    node_args = tiny_args(demo_dir, nodes, 2, "--BATCH_SIZE=8")
    on_nodes = [torchrun(node_args, *launch, f"--node_rank={rank}") for rank in (0, 1)]
    printed = [finished(proc) for proc in on_nodes]
    assert printed[0].count("Epoch 2/2") == 1 and "Epoch" not in printed[1]  # node 0 holds rank 0
    for one, two in zip(h["epochs"], history(nodes)["epochs"], strict=True):
        for key in EPOCH_KEYS - TIMING_KEYS:
            assert one[key] == pytest.approx(two[key], rel=1e-6, abs=1e-9), key
    # The validation AUC in the history covers the whole validation set (both ranks' shares):
    # recompute it in one process from the saved checkpoint and split.
    import pandas as pd

    from src.core.metrics import roc_auc
    from src.core.runtime import Runtime, predict
    from src.data.loader import ImageDataset, make_loader

    model, ckpt = load_model(out / h["best_checkpoint"])
    split = pd.read_csv(out / "split.csv", dtype={"image_name": str})
    val = split[split.split == "val"]
    ds = ImageDataset([demo_dir / f"{n}.jpg" for n in val.image_name], val.target, 32)
    pred = predict(model, make_loader(ds, 16), Runtime(torch.device("cpu")))
    assert len(pred["logits"]) == len(val)
    assert roc_auc(pred["targets"], pred["logits"]) == pytest.approx(h["best_val_auc"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting,message",
    [
        ("--BATCH_SIZE=0", "BATCH_SIZE must be at least 1"),
        ("--IMG_SIZE=0", "IMG_SIZE must be in 32..2048"),
        ("--ARCH=vgg16", "ARCH must be one of"),
        ("--IMBALANCE=bogus", "IMBALANCE must be one of"),
        ("--NUM_EPOCHS=0", "NUM_EPOCHS must be at least 1"),
        ("--NUM_EPOCHS=-1", "NUM_EPOCHS must be at least 1"),
        ("--FOLD=5", "FOLD must be in 0..4"),
        ("--MALIGNANT_NON_MELANOMA=yes", "MALIGNANT_NON_MELANOMA must be one of"),
        ("--SELECT_BY=accuracy", "SELECT_BY must be one of"),
        ("--NEGATIVES_PER_POSITIVE=-1", "NEGATIVES_PER_POSITIVE cannot be negative"),
        ("--IMBALANCE=sampler --NEGATIVES_PER_POSITIVE=5", "both choose what an epoch holds"),
    ],
)
def test_bad_settings_stop_before_any_work(demo_dir, tmp_path, capsys, setting, message):
    # They used to fail after loading data and writing split.csv, or (NUM_EPOCHS<=0) exit 0.
    from src.training import train

    out = tmp_path / "run"
    assert train.main(tiny_args(demo_dir, out, 1, *setting.split())[1:]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(demo_dir, tmp_path):
    from src.training.run import RunDir, RunExists

    out = tmp_path / "run"
    config = SimpleNamespace(RESUME=False, OVERWRITE=False)
    first = RunDir(out, config)  # as a running train.py holds it
    r = run_script(*tiny_args(demo_dir, out, 1, "--OVERWRITE=True"))
    assert r.returncode == 1 and f"another training run (pid {os.getpid()}" in r.stderr
    assert not (out / "split.csv").exists()
    with pytest.raises(RunExists):
        RunDir(out, config)
    del first  # as when that process ends, kill -9 included: the lock file stays, the lock does not
    RunDir(out, config)


def test_evaluation_refuses_a_split_that_is_not_the_checkpoints(trained_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    best = out / trained_run[1].name
    split = (out / "split.csv").read_text().replace(",train\n", ",val\n", 3)  # another run's split
    (out / "split.csv").write_text(split)
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 10, "--workers", 0)
    assert r.returncode == 1 and "is not the split this model was trained with" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_full_disk_stops_training_with_a_message_and_keeps_the_last_good_checkpoint(
    demo_dir, tmp_path, monkeypatch, capsys
):
    from src.training import train

    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            with file_size_limit(4096):  # the OS refuses the write half-way, inside torch's writer
                return real_save(obj, f, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    out = tmp_path / "run"
    assert train.main(tiny_args(demo_dir, out, 2)[1:]) == 1
    err = capsys.readouterr().err
    assert (
        "error: File too large" in err and f"the last good checkpoint, {out / 'last.pth'}, is intact" in err
    )
    assert load_checkpoint(out / "last.pth")["epoch"] == 1 and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_temporaries_of_a_killed_save_are_removed_by_the_next_run(demo_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pth.x1y2z3.tmp").write_bytes(b"")  # what kill -9 during torch.save leaves behind
    r = run_script(*tiny_args(demo_dir, out, 1))
    assert r.returncode == 0, r.stderr
    assert "Removed 1 temporary file(s)" in r.stdout and not list(out.glob(".*.tmp"))


def test_exactly_the_settings_block_is_listed_and_overridable():
    import re

    from src.training import train
    from src.training.config import ConfigError, apply_overrides

    source = (ROOT / "src" / "training" / "train.py").read_text()
    block = source.split("# " + "-" * 93 + " settings")[1].split("end settings")[0]
    names = re.findall(r"^([A-Z][A-Z0-9_]*) = ", block, flags=re.M)
    assert len(names) >= 20 and list(train.DEFAULTS) == names  # the pattern found the block
    help_text = train.settings_help()
    for name in names:
        assert f"--{name}=" in help_text
        value = train.DEFAULTS[name]
        text = {bool: "False", int: "3", float: "0.5", str: "x"}[type(value)]
        assert apply_overrides(train.DEFAULTS, [f"--{name}={text}"])[name] == type(value)(
            text == "True" if type(value) is bool else text
        )
    for other in ("DEMO_IMAGES", "DEMO_PRESET", "DEFAULTS", "LOG_EVERY", "_NAMES_BEFORE_SETTINGS"):
        with pytest.raises(ConfigError, match=f"unknown setting '{other}'"):
            apply_overrides(train.DEFAULTS, [f"--{other}=1"])


@pytest.mark.slow
def test_a_run_with_an_old_format_split_file_resumes(demo_dir, tmp_path):
    # split.csv called its group column patient_id before it became group + group_kind.
    out = tmp_path / "run"
    assert run_script(*tiny_args(demo_dir, out, 1)).returncode == 0
    split = (out / "split.csv").read_text().splitlines()
    old = ["image_name,patient_id,target,fold,split"] + [
        ",".join(row.split(",")[k] for k in (0, 1, 4, 5, 6)) for row in split[1:]
    ]
    (out / "split.csv").write_text("\n".join(old) + "\n")
    r = run_script(*tiny_args(demo_dir, out, 2, "--RESUME=True"))
    assert r.returncode == 0, r.stderr
    assert [e["epoch"] for e in history(out)["epochs"]] == [1, 2]


def test_ctrl_c_during_a_save_waits_for_the_save_to_finish(tmp_path, monkeypatch):
    # A Ctrl-C that landed mid-save once ended in an ImportError traceback and exit code 1.
    import signal

    from src.core.model import MelanomaNet
    from src.training import run as run_module

    real_plot = run_module.plot_training_curves

    def plot_with_a_ctrl_c(history, path):
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the save
        return real_plot(history, path)

    monkeypatch.setattr(run_module, "plot_training_curves", plot_with_a_ctrl_c)
    out = tmp_path / "run"
    config = SimpleNamespace(RESUME=False, OVERWRITE=False, ARCH="resnet18", IMG_SIZE=32, BATCH_SIZE=16)
    config.INPUT_FIT, config.COLOUR_CONSTANCY = "crop", False
    run = run_module.RunDir(out, config)
    (out / "split.csv").write_text("image_name\n")
    model = MelanomaNet("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    record = {"epoch": 1, "val_auc": 0.5, "val_loss": 1.0, "skipped_files": 0, "train_loss": 1.0}
    with pytest.raises(KeyboardInterrupt):
        run.save_epoch(model, optimizer, scheduler, None, 0, [record], dict(record))
    assert (out / "training_curves.png").is_file() and (out / "training_history.json").is_file()
    assert load_checkpoint(out / "last.pth")["epoch"] == 1


def test_best_epoch_by_auc_or_by_partial_auc():
    from src.training.train import best_key

    epoch1 = {"val_auc": 0.90, "val_pauc": 0.05, "val_loss": 0.4}
    epoch2 = {"val_auc": 0.88, "val_pauc": 0.09, "val_loss": 0.5}
    assert best_key(epoch1) > best_key(epoch2)
    assert best_key(epoch2, "pauc") > best_key(epoch1, "pauc")
    undefined = {"val_auc": None, "val_pauc": None, "val_loss": 0.3}
    assert best_key(undefined, "pauc") < best_key(epoch1, "pauc")


def test_focal_loss_is_bce_at_gamma_0_and_discounts_easy_examples():
    import torch.nn.functional as F

    from src.training.engine import focal_loss, make_loss

    z, y = torch.tensor([4.0, -4.0, 0.1, -0.2]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert torch.allclose(focal_loss(z, y, gamma=0.0), bce)
    focal = focal_loss(z, y, gamma=2.0)
    ratio = focal / bce
    assert ratio[:2].max() < 1e-3 and ratio[2:].min() > 0.2  # confident and right vs. unsure
    assert torch.equal(make_loss("focal", pos_weight=50.0, gamma=2.0)(z, y), focal)  # no class weight on top
