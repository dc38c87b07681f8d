"""Fine-tune an ImageNet ResNet50 to tell melanoma from benign skin lesions (ISIC 2020).

    python src/training/train.py                        # data/isic/ + data/metadata.csv -> checkpoints/
    python src/training/train.py --demo                 # SYNTHETIC demo set, about 1 min on a 2-core CPU
    python src/training/train.py --NUM_EPOCHS=10 --BATCH_SIZE=64
    python src/training/train.py --RESUME=True          # continue from checkpoints/last.pth
    torchrun --nproc_per_node=4 src/training/train.py   # DistributedDataParallel on 4 GPUs

Every setting is a constant below; override any of them as --NAME=value. Splits are patient-grouped
and the best epoch is chosen by validation ROC AUC (accuracy means little at 1.76% melanoma).
Writes to CHECKPOINT_DIR: best_model_epoch{N}.pth (everything inference needs), last.pth (model,
optimizer, scheduler, scaler and RNG state, for RESUME), training_history.json,
training_curves.png and split.csv. The demo reaches validation AUC 0.94 in about a minute on a
2-core CPU; on real data, see README "Results".
On CUDA it uses bf16 autocast, channels_last and a uint8 data path (see README "Performance").
"""
from __future__ import annotations

import fcntl
import math
import random
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __name__ == "__main__":  # run as a script: make `src` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import os

import numpy as np
import pandas as pd
import torch

# ---------------------------------------------------------------------------------------- settings
# data
DATA_DIR = "data/isic"              # images ISIC_XXXXXXX.jpg, in the folder or one level down
METADATA_CSV = "data/metadata.csv"  # labels in any supported format; comma-separate to combine sets
DUPLICATES_CSV = ""                 # ISIC_2020_Training_Duplicates.csv: drop one image of each pair
CACHE_DIR = "data/cache"            # resized copies from src/data/prepare.py; used when present
MALIGNANT_NON_MELANOMA = "negative"  # BCC, SCC...: "negative" (ISIC 2020 target), "positive", "drop"
SKIP_MISSING = False                # train without listed-but-absent images (with a warning)
VAL_FRACTION = 0.2                  # patient-grouped hold-out: 0.2 means fold FOLD of 5
FOLD = 0                            # which fold is the validation set
NUM_FOLDS = 0                       # > 0: K-fold with this K instead of 1 / VAL_FRACTION
SEED = 42                           # split, initialisation, shuffling and augmentation
# model and optimisation
ARCH = "resnet50"                   # resnet18 / resnet34 / resnet50 / resnet101
PRETRAINED = True                   # ImageNet weights (torch cache or download); False: random init
IMG_SIZE = 224                      # input side in pixels
BATCH_SIZE = 32                     # per GPU / process
LEARNING_RATE = 0.001               # peak rate of the new head (AdamW)
BACKBONE_LR_SCALE = 0.1             # the pretrained backbone learns at LEARNING_RATE * this
WARMUP_EPOCHS = 0.5                 # linear warm-up, then cosine decay to 0
WEIGHT_DECAY = 0.01                 # AdamW decoupled weight decay
NUM_EPOCHS = 3                      # passes over the training split
IMBALANCE = "weighted_bce"          # "weighted_bce" (pos_weight = benign/melanoma), "focal", "sampler", "none"
FOCAL_GAMMA = 2.0                   # focusing strength when IMBALANCE = "focal"
# speed
NUM_WORKERS = -1                    # DataLoader processes; -1: one per CPU core, at most 16
PREFETCH_FACTOR = 4                 # batches each worker prepares ahead
AMP = True                          # CUDA: bf16 autocast where supported, else fp16 with GradScaler
CHANNELS_LAST = True                # CUDA: NHWC memory layout (faster convolutions on tensor cores)
COMPILE = False                     # torch.compile the model (slower first epoch, faster after)
MAX_STEPS_PER_EPOCH = 0             # > 0: cut each epoch short (smoke tests)
# outputs
CHECKPOINT_DIR = "checkpoints"      # where checkpoints, history and split go
RESUME = False                      # continue the run in CHECKPOINT_DIR from last.pth
OVERWRITE = False                   # allow replacing a finished or interrupted run in CHECKPOINT_DIR
# -------------------------------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, (bool, int, float, str))}
# `--demo`: a small preset on the SYNTHETIC demo set; other --NAME=value overrides still apply on top.
DEMO_PRESET = {"DATA_DIR": "data/demo", "METADATA_CSV": "data/demo/metadata.csv", "CACHE_DIR": "",
               "CHECKPOINT_DIR": "checkpoints/demo", "PRETRAINED": False, "IMG_SIZE": 64, "NUM_EPOCHS": 4,
               "BATCH_SIZE": 32, "LEARNING_RATE": 0.001, "BACKBONE_LR_SCALE": 1.0, "WARMUP_EPOCHS": 0.3,
               "OVERWRITE": True}
DEMO_IMAGES, DEMO_MELANOMA_RATE = 1200, 0.2

from src.data.dataset import EpochSampler, ImageDataset, make_loader  # noqa: E402
from src.data.demo import make_demo_dataset  # noqa: E402
from src.data.loader import DataError, load_labeled_images  # noqa: E402
from src.data.metadata import text  # noqa: E402
from src.data.splits import SplitError, folds_for_fraction, make_split, read_split, split_digest, write_split  # noqa: E402
from src.data.atomic import atomic_write_json, remove_stale_temporaries  # noqa: E402
from src.data.metadata import MALIGNANT_POLICIES  # noqa: E402
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from src.training import distributed as dist  # noqa: E402
from src.training.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint, versions  # noqa: E402
from src.training.config import ConfigError, apply_overrides  # noqa: E402
from src.training.engine import (IMBALANCE_CHOICES, NonFiniteLoss, Runtime, amp_dtype_for, evaluate,  # noqa: E402
                                 make_loss, train_one_epoch)
from src.training.model import ARCHITECTURES, IMG_SIZE_RANGE, WeightsUnavailable, build_model  # noqa: E402
from src.training.report import plot_training_curves  # noqa: E402


class RunExists(Exception):
    pass


def log(*args, rank: int = 0) -> None:
    if rank == 0:
        print(*args, flush=True)


def settings_help() -> str:
    """The docstring, then every setting with its default and the comment beside it in this file."""
    lines = [__doc__.strip(), "", "Settings (override as --NAME=value):"]
    for line in Path(__file__).read_text().splitlines():
        name = line.split("=")[0].strip()
        if name in DEFAULTS and "#" in line:
            option = f"--{name}={DEFAULTS[name]!r}"
            lines.append(f"  {option:<38} {line.split('#', 1)[1].strip()}")
    return "\n".join(lines)


def resolve_config(argv: list[str]) -> SimpleNamespace:
    config = dict(DEFAULTS)
    demo = "--demo" in argv
    if demo:
        config.update(DEMO_PRESET)
    config = apply_overrides(config, [a for a in argv if a != "--demo"])
    return SimpleNamespace(**config, DEMO=demo)


def check_settings(c) -> None:
    """Every setting, checked before any data is read or file written: a typo costs a second, not an epoch."""
    rules = [
        (c.ARCH in ARCHITECTURES, f"ARCH must be one of {ARCHITECTURES}, not {c.ARCH!r}"),
        (IMG_SIZE_RANGE[0] <= c.IMG_SIZE <= IMG_SIZE_RANGE[1], f"IMG_SIZE must be in {IMG_SIZE_RANGE[0]}..{IMG_SIZE_RANGE[1]}"),
        (c.BATCH_SIZE >= 1, "BATCH_SIZE must be at least 1"),
        (c.NUM_EPOCHS >= 1, "NUM_EPOCHS must be at least 1"),
        (0 < c.LEARNING_RATE < math.inf, "LEARNING_RATE must be a positive number"),
        (c.BACKBONE_LR_SCALE >= 0 and c.WARMUP_EPOCHS >= 0 and c.WEIGHT_DECAY >= 0 and c.FOCAL_GAMMA >= 0,
         "BACKBONE_LR_SCALE, WARMUP_EPOCHS, WEIGHT_DECAY and FOCAL_GAMMA cannot be negative"),
        (c.IMBALANCE in IMBALANCE_CHOICES, f"IMBALANCE must be one of {IMBALANCE_CHOICES}, not {c.IMBALANCE!r}"),
        (c.MALIGNANT_NON_MELANOMA in MALIGNANT_POLICIES,
         f"MALIGNANT_NON_MELANOMA must be one of {MALIGNANT_POLICIES}, not {c.MALIGNANT_NON_MELANOMA!r}"),
        (0 < c.VAL_FRACTION < 1, "VAL_FRACTION must be between 0 and 1"),
        (c.NUM_FOLDS == 0 or c.NUM_FOLDS >= 2, "NUM_FOLDS must be 0 (use VAL_FRACTION) or at least 2"),
        (c.NUM_WORKERS >= -1 and c.PREFETCH_FACTOR >= 1 and c.MAX_STEPS_PER_EPOCH >= 0,
         "NUM_WORKERS must be -1 or more, PREFETCH_FACTOR at least 1, MAX_STEPS_PER_EPOCH 0 or more"),
    ]
    problems = [message for ok, message in rules if not ok]
    if not problems and not 0 <= c.FOLD < (c.NUM_FOLDS or folds_for_fraction(c.VAL_FRACTION)):
        problems.append(f"FOLD must be in 0..{(c.NUM_FOLDS or folds_for_fraction(c.VAL_FRACTION)) - 1}")
    if problems:
        raise ConfigError("; ".join(problems))


def lock_run_dir(out: Path):
    """One training run per CHECKPOINT_DIR at a time: two runs writing one folder mixed a model with
    another run's split. flock is released by the kernel when the process dies, so a killed run
    never leaves a stale lock. Returns the open lock file; keep it open for the whole run."""
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / "run.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunExists(f"another training run ({owner}) is writing to {out}/; wait for it to finish "
                        f"or use another --CHECKPOINT_DIR") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    removed = remove_stale_temporaries(out)
    if removed:
        log(f"Removed {removed} temporary file(s) left in {out}/ by an interrupted save")
    return handle


def make_runtime(c, rank: int, world: int, local_rank: int) -> Runtime:
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    amp = amp_dtype_for(c.AMP) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    rt = Runtime(device, amp, c.CHANNELS_LAST and device.type == "cuda", scaler, rank, world)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    log(f"Device: {device.type} ({name}), autocast: {amp or 'off'}, channels_last: {rt.channels_last}, "
        f"processes: {world}", rank=rank)
    return rt


def check_run_dir(out: Path, c) -> None:
    """Never silently replace an earlier run: resume it, overwrite on purpose, or pick another folder."""
    if c.RESUME and not (out / "last.pth").is_file():
        raise RunExists(f"--RESUME=True but there is no {out / 'last.pth'} to continue from")
    if not c.RESUME and not c.OVERWRITE and (out / "last.pth").is_file():
        raise RunExists(f"{out}/ already holds a run (last.pth). Continue it with --RESUME=True, "
                        f"write elsewhere with --CHECKPOINT_DIR=..., or replace it with --OVERWRITE=True")


def get_split(table: pd.DataFrame, c, out: Path, rank: int) -> pd.DataFrame:
    """The saved split when resuming (so validation stays the same images), a new one otherwise."""
    path = out / "split.csv"
    if c.RESUME and path.is_file():
        split = read_split(path)
        if set(split["image_name"]) != set(table["image_name"]):
            raise SplitError(f"{path} lists other images than the data now has; "
                             f"resume with the same data, or start a new run")
        return split.set_index("image_name").loc[table["image_name"]].reset_index()
    split = make_split(table, c.VAL_FRACTION, c.FOLD, c.SEED, c.NUM_FOLDS)
    if rank == 0:
        write_split(split, path)
    return split


def split_grouping(table: pd.DataFrame) -> str:
    """What the split kept together, said plainly: without patient ids a patient can be on both sides."""
    if (text(table["patient_id"]) != "").all():
        return "no patient in both"
    if (text(table["lesion_id"]) != "").any():
        return "grouped by patient where known, else lesion, else image (labels lack some patient ids)"
    return "grouped by image only: these labels have no patient or lesion ids, so one patient may be on both sides"


def resolve_workers(requested: int) -> int:
    return min(os.cpu_count() or 1, 16) if requested < 0 else requested


def make_loaders(table: pd.DataFrame, split: pd.DataFrame, c, rt: Runtime):
    is_val = (split["split"] == "val").to_numpy()
    train, val = table[~is_val], table[is_val]
    if train["target"].nunique() < 2:
        raise DataError(f"the training split has only one class ({len(train)} images); need both")
    sampler = EpochSampler(train["target"].to_numpy(), c.SEED, balanced=c.IMBALANCE == "sampler",
                           rank=rt.rank, world_size=rt.world_size)
    workers, pin = resolve_workers(c.NUM_WORKERS), rt.device.type == "cuda"
    train_ds = ImageDataset(train["path"], train["target"], c.IMG_SIZE)
    val_ds = ImageDataset(val["path"], val["target"], c.IMG_SIZE)
    val_shard = list(range(rt.rank, len(val_ds), rt.world_size))  # each rank a share, gathered after
    train_loader = make_loader(train_ds, c.BATCH_SIZE, sampler, workers, pin, c.PREFETCH_FACTOR,
                               drop_last=len(sampler) > c.BATCH_SIZE)  # no 1-image batch for BatchNorm
    val_loader = make_loader(val_ds, c.BATCH_SIZE * 2, val_shard, workers, pin, c.PREFETCH_FACTOR)
    n_pos = int(train["target"].sum())
    pos_weight = (len(train) - n_pos) / max(n_pos, 1)
    return train_loader, val_loader, sampler, pos_weight, train, val


def make_optimizer(model, c, steps_per_epoch: int):
    groups = [{"params": model.backbone_parameters(), "lr": c.LEARNING_RATE * c.BACKBONE_LR_SCALE},
              {"params": model.head_parameters(), "lr": c.LEARNING_RATE}]
    optimizer = torch.optim.AdamW(groups, weight_decay=c.WEIGHT_DECAY)
    total = max(1, steps_per_epoch * c.NUM_EPOCHS)
    warmup = max(1, round(c.WARMUP_EPOCHS * steps_per_epoch))

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)


def finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def epoch_record(epoch: int, train: dict, val: dict, lr: float, names: dict) -> dict:
    skipped = [names["train"][i] for i in train["skipped"]] + [names["val"][i] for i in val["skipped"]]
    record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["accuracy"],
              "val_loss": val["loss"], "val_acc": val["accuracy"], "val_auc": val["auc"],
              "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"],
              "val_pauc": val["pauc"], "lr": lr, "seconds": train["seconds"] + val["seconds"],
              "train_images_per_s": train["images_per_s"], "skipped_files": len(skipped),
              "skipped_examples": skipped[:10]}
    return {k: finite_or_none(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in record.items()}


def print_epoch(r: dict, num_epochs: int, rank: int) -> None:
    fmt = lambda v: "  n/a " if v is None else f"{v:.4f}"  # noqa: E731
    log(f"Epoch {r['epoch']}/{num_epochs} ({r['seconds']:.1f}s, {r['train_images_per_s']:.0f} img/s)\n"
        f"  Train Loss: {fmt(r['train_loss'])} | Train Acc: {fmt(r['train_acc'])}\n"
        f"  Val Loss: {fmt(r['val_loss'])} | Val Acc: {fmt(r['val_acc'])} | Val AUC: {fmt(r['val_auc'])} | "
        f"Sens: {fmt(r['val_sensitivity'])} | Spec: {fmt(r['val_specificity'])} | "
        f"pAUC(TPR>=0.8): {fmt(r['val_pauc'])}" +
        (f"\n  skipped {r['skipped_files']} unreadable files, e.g. {r['skipped_examples'][:3]}"
         if r["skipped_files"] else ""), rank=rank)


def best_key(record: dict) -> tuple:
    """Validation AUC; where it is undefined (one class in a tiny split), lower validation loss."""
    auc, loss = record["val_auc"], record["val_loss"]
    return (auc if auc is not None else -math.inf, -loss if loss is not None else -math.inf)


def inference_payload(model, c, epoch: int, record: dict) -> dict:
    """Everything prediction needs, in plain types so that weights_only=True loading works."""
    return {"format": FORMAT, "arch": c.ARCH, "img_size": c.IMG_SIZE, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "threshold": 0.5, "temperature": 1.0,
            "model_state": model.state_dict(), "config": dict(vars(c)), "epoch": epoch + 1,
            "metrics": record, "versions": versions(), "split_file": "split.csv",
            "split_sha256": split_digest(Path(c.CHECKPOINT_DIR) / "split.csv")}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_epoch(out: Path, model, optimizer, scheduler, rt: Runtime, c, epoch: int, history: list, best: dict):
    """Best checkpoint (if this epoch is best), then last.pth, then the JSON history; each atomic."""
    record = history[-1]
    if best.get("epoch") == epoch + 1:
        path = out / f"best_model_epoch{epoch + 1}.pth"
        save_checkpoint(inference_payload(model, c, epoch, record), path)
        for old in out.glob("best_model_epoch*.pth"):
            if old != path:
                old.unlink()  # only after the new best is safely written
        log(f"  * new best validation AUC -> {path}")
    last = inference_payload(model, c, epoch, record)
    last.update({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": rt.scaler.state_dict() if rt.scaler else None, "rng": rng_state(),
                 "history": history, "best": best})
    save_checkpoint(last, out / "last.pth")
    write_history(out, c, history, best)
    plot_training_curves({"epochs": history}, out / "training_curves.png")


def write_history(out: Path, c, history: list, best: dict) -> None:
    atomic_write_json(out / "training_history.json", {
        "config": dict(vars(c)), "versions": versions(), "epochs": history,
        "best_epoch": best.get("epoch"), "best_val_auc": best.get("val_auc"),
        "best_checkpoint": f"best_model_epoch{best['epoch']}.pth" if best.get("epoch") else None,
        "skipped_files": sum(r["skipped_files"] for r in history), "split_file": "split.csv"})


def restore(out: Path, model, optimizer, scheduler, rt: Runtime, c) -> tuple[int, list, dict]:
    ckpt = load_checkpoint(out / "last.pth", map_location=rt.device)
    if ckpt.get("optimizer") is None:
        raise CheckpointError(f"{out / 'last.pth'} has no optimizer state; cannot resume from it")
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if rt.scaler is not None and ckpt.get("scaler"):
        rt.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    random.setstate(ckpt["rng"]["python"])
    if torch.cuda.is_available() and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
    log(f"Resuming after epoch {ckpt['epoch']} of {c.NUM_EPOCHS} from {out / 'last.pth'}", rank=rt.rank)
    return ckpt["epoch"], list(ckpt["history"]), dict(ckpt["best"])


def prepare_data(c, rank: int):
    if c.DEMO and rank == 0 and not Path(c.METADATA_CSV).is_file():
        log(f"Writing the SYNTHETIC demo dataset to {c.DATA_DIR}/ ({DEMO_IMAGES} images)...")
        make_demo_dataset(c.DATA_DIR, DEMO_IMAGES, DEMO_MELANOMA_RATE, seed=0)
    dist.barrier()
    data = load_labeled_images(c.METADATA_CSV, c.DATA_DIR, c.IMG_SIZE, c.CACHE_DIR or None,
                               c.DUPLICATES_CSV or None, c.MALIGNANT_NON_MELANOMA, c.SKIP_MISSING)
    t = data.table
    log(f"Data: {len(t):,} images, {int(t['target'].sum()):,} melanoma ({100 * t['target'].mean():.2f}%), "
        f"labels from {', '.join(map(str, data.metadata_paths))}"
        + (f", cache {data.cache_dir} ({data.from_cache:,} images; {len(t) - data.from_cache:,} not cached yet, "
           f"read from the originals)" if data.cache_dir else ""), rank=rank)
    return t


def training_wrapper(model, c, rt: Runtime, world: int, local_rank: int):
    """What the training step calls: compiled and/or DDP-wrapped. Validation and checkpoints use the
    bare model, so compile sees one input shape and saved weights carry no wrapper prefixes."""
    net = torch.compile(model) if c.COMPILE else model
    if world > 1:
        device_ids = [local_rank] if rt.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net


def fit(c, rank: int, world: int, local_rank: int) -> int:
    torch.manual_seed(c.SEED)
    random.seed(c.SEED)
    rt = make_runtime(c, rank, world, local_rank)
    out = Path(c.CHECKPOINT_DIR)
    check_run_dir(out, c)  # before the lock, so that a refused run leaves the folder untouched
    lock = lock_run_dir(out) if rank == 0 else None  # noqa: F841 - held until the process ends
    check_run_dir(out, c)  # again: another run may have finished in between
    table = prepare_data(c, rank)
    split = get_split(table, c, out, rank)
    model = build_model(c.ARCH, c.PRETRAINED).to(rt.device)
    model = model.to(memory_format=torch.channels_last) if rt.channels_last else model
    train_loader, val_loader, sampler, pos_weight, train_t, val_t = make_loaders(table, split, c, rt)
    log(f"Split: {len(train_t):,} train / {len(val_t):,} val images, {split_grouping(table)} "
        f"(saved to {out / 'split.csv'}); imbalance: {c.IMBALANCE}"
        + (f" (pos_weight {pos_weight:.1f})" if c.IMBALANCE == "weighted_bce" else ""), rank=rank)
    steps = min(len(train_loader), c.MAX_STEPS_PER_EPOCH) if c.MAX_STEPS_PER_EPOCH else len(train_loader)
    optimizer, scheduler = make_optimizer(model, c, steps)
    loss_fn = make_loss(c.IMBALANCE, pos_weight, c.FOCAL_GAMMA)
    start, history, best = restore(out, model, optimizer, scheduler, rt, c) if c.RESUME else (0, [], {})
    net = training_wrapper(model, c, rt, world, local_rank)
    names = {"train": train_t["image_name"].tolist(), "val": val_t["image_name"].tolist()}
    for epoch in range(start, c.NUM_EPOCHS):
        sampler.set_epoch(epoch)
        train = train_one_epoch(net, train_loader, optimizer, scheduler, loss_fn, rt, epoch, c.SEED, steps)
        dist.sync_buffers(model)
        t0 = time.perf_counter()
        val = evaluate(model, val_loader, rt)
        val["seconds"] = time.perf_counter() - t0
        history.append(epoch_record(epoch, train, val, scheduler.get_last_lr()[-1], names))
        print_epoch(history[-1], c.NUM_EPOCHS, rank)
        if not best or best_key(history[-1]) > best_key(best):
            best = {**history[-1]}
        if rank == 0:
            save_epoch(out, model, optimizer, scheduler, rt, c, epoch, history, best)
        dist.barrier()
    auc = best.get("val_auc")
    log(f"Done. Best epoch {best.get('epoch')}: validation AUC "
        f"{'n/a' if auc is None else f'{auc:.4f}'} -> {out}/best_model_epoch{best.get('epoch')}.pth", rank=rank)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(settings_help())
        return 0
    try:
        c = resolve_config(argv)
        check_settings(c)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank, world, local_rank = dist.setup()
    try:
        return fit(c, rank, world, local_rank)
    except (DataError, SplitError, WeightsUnavailable, CheckpointError, RunExists) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except NonFiniteLoss as e:
        last = Path(c.CHECKPOINT_DIR) / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
        print(f"error: {e}. Training stopped; {kept}. Try a lower LEARNING_RATE.", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only or vanished folder: say so, keep what was saved
        last = Path(c.CHECKPOINT_DIR) / "last.pth"
        kept = f"the last good checkpoint, {last}, is intact" if last.is_file() else "no checkpoint was written"
        print(f"error: {e.strerror or e}: {e.filename or c.CHECKPOINT_DIR}. Training stopped; {kept}.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        last = Path(c.CHECKPOINT_DIR) / "last.pth"
        where = f"{last} holds the last finished epoch; continue with --RESUME=True" if last.is_file() \
            else "no epoch had finished, so nothing was saved"
        print(f"\nInterrupted: {where}.", file=sys.stderr)
        return 130
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
