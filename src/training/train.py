"""Fine-tune an ImageNet ResNet50 to tell melanoma from benign skin lesions (ISIC 2020).

    python src/training/train.py                        # data/isic/ + data/metadata.csv -> checkpoints/
    python src/training/train.py --demo                 # SYNTHETIC demo set, random init, 64 px
    python src/training/train.py --NUM_EPOCHS=10 --BATCH_SIZE=64
    python src/training/train.py --RESUME=True          # continue from checkpoints/last.pth
    torchrun --nproc_per_node=4 src/training/train.py   # DistributedDataParallel on 4 GPUs

Every setting is a constant below; override any of them as --NAME=value (--help lists them).
Splits keep each patient on one side, and the best epoch is chosen by validation ROC AUC (accuracy
means little at 1.76% melanoma; SELECT_BY="pauc" picks by the ISIC 2024 partial AUC instead).
Writes to CHECKPOINT_DIR: best.pth and best_model_epoch{N}.pth (the same file: everything inference
needs), last.pth (for RESUME), training_history.json, training_curves.png and split.csv.
How long it takes and what it reaches, measured (demo and real data): README "Results".
One epoch reads from four files: this one, engine.py (train_one_epoch, validate),
src/data/loader.py (the Dataset) and src/data/transforms.py (preprocessing and augmentation).
"""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from src.core import distributed as dist
from src.core.model import ARCHITECTURES, IMG_SIZE_RANGE, build_model, size_problem
from src.core.runtime import Runtime
from src.data.dedup import fingerprints, stored_near_pairs
from src.data.demo import is_current as demo_is_current
from src.data.demo import make_demo_dataset
from src.data.labels import DataError, load_labeled_images
from src.data.loader import EpochSampler, ImageDataset, default_workers, make_loader
from src.data.metadata import MALIGNANT_POLICIES, diagnosis_classes, diagnosis_names
from src.data.splits import folds_for_fraction, grouping_description, make_split, merge_summary
from src.data.transforms import FITS, InputSpec
from src.errors import command, error_line
from src.training.config import ConfigError, apply_overrides
from src.training.engine import (
    IMBALANCE_CHOICES,
    NonFiniteLoss,
    StepOptions,
    WeightAverage,
    make_loss,
    optimizer_steps,
    train_one_epoch,
    validate,
)
from src.training.run import RunDir, TensorBoardLog

_NAMES_BEFORE_SETTINGS = set(globals())
# --------------------------------------------------------------------------------------------- settings
# data
DATA_DIR = "data/isic"  # images ISIC_XXXXXXX.jpg, in the folder or one level down
METADATA_CSV = "data/metadata.csv"  # labels in any supported format; comma-separate to combine sets
DUPLICATES_CSV = ""  # ISIC_2020_Training_Duplicates.csv: drop one image of each pair
CACHE_DIR = "data/cache"  # resized copies from src/data/prepare.py; used when present
MALIGNANT_NON_MELANOMA = "negative"  # BCC, SCC...: "negative" (ISIC 2020 target), "positive", "drop"
SKIP_MISSING = False  # train without listed-but-absent images (with a warning)
VAL_FRACTION = 0.2  # grouped hold-out: 0.2 means fold FOLD of 5
FOLD = 0  # which fold is the validation set
NUM_FOLDS = 0  # > 0: K-fold with this K instead of 1 / VAL_FRACTION
SEED = 42  # split, initialisation, shuffling and augmentation
SELECT_BY = "auc"  # best epoch by validation "auc" (ROC AUC) or "pauc" (ISIC 2024 partial AUC, TPR >= 0.8)
MERGE_NEAR_DUPLICATES = True  # keep pixel-level near-copies (src/data/dedup.py) on one side of the split
# model and optimisation
ARCH = "resnet50"  # resnet18-101, efficientnet_b0-b7, convnext_tiny-large, vit_b_16 (torchvision)
PRETRAINED = True  # ImageNet weights (torch cache or download); False: random init
IMG_SIZE = 224  # input side in pixels
INPUT_FIT = "crop"  # "crop": short side to IMG_SIZE, centre crop; "pad": the whole image, black borders
COLOUR_CONSTANCY = False  # Shades of Gray white balance of every image (train, evaluate, predict, serve)
BATCH_SIZE = 32  # per GPU / process
LEARNING_RATE = 0.001  # peak rate of the new head (AdamW)
BACKBONE_LR_SCALE = 0.1  # the pretrained backbone learns at LEARNING_RATE * this
WARMUP_EPOCHS = 0.5  # linear warm-up, then cosine decay to 0
WEIGHT_DECAY = 0.01  # AdamW decoupled weight decay
NUM_EPOCHS = 3  # passes over the training split
TARGET = "melanoma"  # "melanoma" (one logit) or "diagnosis": a softmax over the diagnoses present
IMBALANCE = "weighted_bce"  # "weighted_bce" (pos_weight = benign/melanoma), "focal", "sampler", "none"
NEGATIVES_PER_POSITIVE = 0  # > 0: an epoch is every melanoma and this many times as many fresh benign images
FOCAL_GAMMA = 2.0  # focusing strength when IMBALANCE = "focal"
EMA_DECAY = 0.0  # > 0: moving average of the weights (e.g. 0.999), validated and saved as the model
GRAD_CLIP = 0.0  # > 0: clip the global gradient norm to this
ACCUMULATE_STEPS = 1  # batches per optimizer step: an effective batch of BATCH_SIZE x this
LABEL_SMOOTHING = 0.0  # targets pulled towards 0.5 by this share (0.1: 0 -> 0.05, 1 -> 0.95)
# speed
NUM_WORKERS = -1  # DataLoader processes; -1: three quarters of the CPU cores, at most 12
PREFETCH_FACTOR = 4  # batches each worker prepares ahead
AMP = True  # CUDA: bf16 autocast where supported, else fp16 with GradScaler
CHANNELS_LAST = True  # CUDA: NHWC memory layout (faster convolutions on tensor cores)
COMPILE = False  # torch.compile the model (slower first epoch, faster after)
MAX_STEPS_PER_EPOCH = 0  # > 0: cut each epoch short (smoke tests)
# outputs
CHECKPOINT_DIR = "checkpoints"  # where checkpoints, history, summary.csv and split go
TENSORBOARD = False  # also log to CHECKPOINT_DIR/tensorboard/ (needs `pip install tensorboard`)
RESUME = False  # continue the run in CHECKPOINT_DIR from last.pth
OVERWRITE = False  # allow replacing a finished or interrupted run in CHECKPOINT_DIR
# ----------------------------------------------------------------------------------------- end settings
# Exactly the names defined between the two markers are settings: a constant added there can be
# overridden (and is listed by --help); nothing defined elsewhere in this file can be.
DEFAULTS = {
    k: v for k, v in globals().items() if k not in _NAMES_BEFORE_SETTINGS and k != "_NAMES_BEFORE_SETTINGS"
}
# `--demo`: a small preset on the SYNTHETIC demo set; other --NAME=value overrides still apply on top.
# fmt: off
DEMO_PRESET = {"DATA_DIR": "data/demo", "METADATA_CSV": "data/demo/metadata.csv", "CACHE_DIR": "",
               "CHECKPOINT_DIR": "checkpoints/demo", "PRETRAINED": False, "IMG_SIZE": 64, "NUM_EPOCHS": 4,
               "BATCH_SIZE": 32, "LEARNING_RATE": 0.001, "BACKBONE_LR_SCALE": 1.0, "WARMUP_EPOCHS": 0.3,
               "OVERWRITE": True, "MERGE_NEAR_DUPLICATES": False}  # the drawings look alike at 32x32
# fmt: on
DEMO_IMAGES, DEMO_MELANOMA_RATE = 1200, 0.2


@command
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(settings_help())
        return 0
    c = resolve_config(argv)
    check_settings(c)
    rank, world, local_rank = dist.setup()
    try:
        return fit(c, rank, world, local_rank)
    except (NonFiniteLoss, OSError, KeyboardInterrupt) as e:  # say what was kept
        return report_stop(e, Path(c.CHECKPOINT_DIR) / "last.pth")
    finally:
        dist.cleanup()


def fit(c, rank: int, world: int, local_rank: int) -> int:
    """The whole run: data, split and model, then the epoch loop, saving after every epoch."""
    torch.manual_seed(c.SEED)
    random.seed(c.SEED)
    rt = Runtime.for_training(c.AMP, c.CHANNELS_LAST, rank, world, local_rank)
    log(f"Device: {rt.describe()}", rank=rank)
    run = RunDir(c.CHECKPOINT_DIR, c, rank, world)  # resume/overwrite policy and a lock on the folder
    table = load_data(c, rank)
    split = run.split(
        table,
        lambda: make_split(
            table, c.VAL_FRACTION, c.FOLD, c.SEED, c.NUM_FOLDS, near_duplicates(table, c, rank)
        ),
    )
    classes = diagnosis_classes(table) if c.TARGET == "diagnosis" else None
    model = build_model(c.ARCH, c.PRETRAINED, c.IMG_SIZE, classes).to(rt.device)
    model = model.to(memory_format=torch.channels_last) if rt.channels_last else model
    train_loader, val_loader, sampler, loss_fn, names = make_loaders(table, split, c, rt, classes)
    steps = min(len(train_loader), c.MAX_STEPS_PER_EPOCH) if c.MAX_STEPS_PER_EPOCH else len(train_loader)
    optimizer, scheduler = make_optimizer(model, c, optimizer_steps(steps, c.ACCUMULATE_STEPS))
    ema = WeightAverage(model, c.EMA_DECAY) if c.EMA_DECAY > 0 else None
    options = StepOptions(c.GRAD_CLIP, c.ACCUMULATE_STEPS, 0 if classes else None)
    start, history, best = (0, [], {})
    if c.RESUME:
        start, history, best = run.restore(model, optimizer, scheduler, rt.scaler, rt.device, ema)
    net = training_wrapper(model, c, rt, world, local_rank)
    board = TensorBoardLog(run.path) if c.TENSORBOARD and rank == 0 else None
    for epoch in range(start, c.NUM_EPOCHS):
        sampler.set_epoch(epoch)
        watch = board.progress(epoch * steps, scheduler) if board else None
        train = train_one_epoch(
            net, train_loader, optimizer, scheduler, loss_fn, rt, epoch, c.SEED, steps, options, ema, watch
        )
        dist.sync_buffers(model)
        val = validate(ema.module if ema else model, val_loader, rt)
        history.append(epoch_record(epoch, train, val, scheduler.get_last_lr()[-1], names))
        print_epoch(history[-1], c.NUM_EPOCHS, rank)
        if board:
            board.epoch(history[-1])
        if not best or best_key(history[-1], c.SELECT_BY) > best_key(best, c.SELECT_BY):
            best = {**history[-1]}
        if rank == 0:
            run.save_epoch(model, optimizer, scheduler, rt.scaler, epoch, history, best, ema)
        dist.barrier()
    if board:
        board.close()
    log(done_line(best, c, run.path), rank=rank)
    return 0


def done_line(best: dict, c, folder: Path) -> str:
    auc = "n/a" if best.get("val_auc") is None else f"{best['val_auc']:.4f}"
    pauc = "" if c.SELECT_BY == "auc" or best.get("val_pauc") is None else f", pAUC {best['val_pauc']:.4f}"
    return (
        f"Done. Best epoch {best['epoch']} (by {SELECTION[c.SELECT_BY]}): validation AUC {auc}{pauc} "
        f"-> {folder}/best.pth (= best_model_epoch{best['epoch']}.pth)"
    )


# ------------------------------------------------------------------------------------------------ helpers
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
    size_range = f"{IMG_SIZE_RANGE[0]}..{IMG_SIZE_RANGE[1]}"
    rules = [
        (c.ARCH in ARCHITECTURES, f"ARCH must be one of {', '.join(ARCHITECTURES)}, not {c.ARCH!r}"),
        (
            c.ARCH not in ARCHITECTURES or not size_problem(c.ARCH, c.IMG_SIZE),
            size_problem(c.ARCH, c.IMG_SIZE),
        ),
        (IMG_SIZE_RANGE[0] <= c.IMG_SIZE <= IMG_SIZE_RANGE[1], f"IMG_SIZE must be in {size_range}"),
        (c.BATCH_SIZE >= 1, "BATCH_SIZE must be at least 1"),
        (c.NUM_EPOCHS >= 1, "NUM_EPOCHS must be at least 1"),
        (0 < c.LEARNING_RATE < math.inf, "LEARNING_RATE must be a positive number"),
        (
            min(c.BACKBONE_LR_SCALE, c.WARMUP_EPOCHS, c.WEIGHT_DECAY, c.FOCAL_GAMMA) >= 0,
            "BACKBONE_LR_SCALE, WARMUP_EPOCHS, WEIGHT_DECAY and FOCAL_GAMMA cannot be negative",
        ),
        (
            c.IMBALANCE in IMBALANCE_CHOICES,
            f"IMBALANCE must be one of {IMBALANCE_CHOICES}, not {c.IMBALANCE!r}",
        ),
        (c.NEGATIVES_PER_POSITIVE >= 0, "NEGATIVES_PER_POSITIVE cannot be negative"),
        (0 <= c.EMA_DECAY < 1, "EMA_DECAY must be in [0, 1): 0 is off, 0.999 a typical average"),
        (c.GRAD_CLIP >= 0, "GRAD_CLIP cannot be negative (0 is off)"),
        (c.ACCUMULATE_STEPS >= 1, "ACCUMULATE_STEPS must be at least 1"),
        (c.INPUT_FIT in FITS, f"INPUT_FIT must be one of {FITS}, not {c.INPUT_FIT!r}"),
        (c.TARGET in TARGETS, f"TARGET must be one of {TARGETS}, not {c.TARGET!r}"),
        (0 <= c.LABEL_SMOOTHING < 1, "LABEL_SMOOTHING must be in [0, 1)"),
        (
            not (c.NEGATIVES_PER_POSITIVE and c.IMBALANCE == "sampler"),
            'NEGATIVES_PER_POSITIVE and IMBALANCE="sampler" both choose what an epoch holds: use one',
        ),
        (
            c.MALIGNANT_NON_MELANOMA in MALIGNANT_POLICIES,
            f"MALIGNANT_NON_MELANOMA must be one of {MALIGNANT_POLICIES}, not {c.MALIGNANT_NON_MELANOMA!r}",
        ),
        (c.SELECT_BY in SELECTION, f"SELECT_BY must be one of {tuple(SELECTION)}, not {c.SELECT_BY!r}"),
        (0 < c.VAL_FRACTION < 1, "VAL_FRACTION must be between 0 and 1"),
        (c.NUM_FOLDS == 0 or c.NUM_FOLDS >= 2, "NUM_FOLDS must be 0 (use VAL_FRACTION) or at least 2"),
        (
            c.NUM_WORKERS >= -1 and c.PREFETCH_FACTOR >= 1 and c.MAX_STEPS_PER_EPOCH >= 0,
            "NUM_WORKERS must be -1 or more, PREFETCH_FACTOR at least 1, MAX_STEPS_PER_EPOCH 0 or more",
        ),
    ]
    problems = [message for ok, message in rules if not ok]
    if c.TENSORBOARD and importlib.util.find_spec("tensorboard") is None:
        problems.append("TENSORBOARD=True needs the tensorboard package: pip install tensorboard")
    folds = c.NUM_FOLDS or (folds_for_fraction(c.VAL_FRACTION) if 0 < c.VAL_FRACTION < 1 else 1)
    if not problems and not 0 <= c.FOLD < folds:
        problems.append(f"FOLD must be in 0..{folds - 1}")
    if problems:
        raise ConfigError("; ".join(problems))


def load_data(c, rank: int):
    if c.DEMO and rank == 0 and not demo_is_current(Path(c.METADATA_CSV).parent):
        log(f"Writing the SYNTHETIC demo dataset to {c.DATA_DIR}/ ({DEMO_IMAGES} images)...")
        make_demo_dataset(c.DATA_DIR, DEMO_IMAGES, DEMO_MELANOMA_RATE, seed=0)
    dist.barrier()
    data = load_labeled_images(
        c.METADATA_CSV,
        c.DATA_DIR,
        c.IMG_SIZE,
        c.CACHE_DIR or None,
        c.DUPLICATES_CSV or None,
        c.MALIGNANT_NON_MELANOMA,
        c.SKIP_MISSING,
    )
    t = data.table
    cache = (
        f", cache {data.cache_dir} ({data.from_cache:,} images; {len(t) - data.from_cache:,} not cached yet, "
        f"read from the originals)"
        if data.cache_dir
        else ""
    )
    log(
        f"Data: {len(t):,} images, {int(t['target'].sum()):,} melanoma ({100 * t['target'].mean():.2f}%), "
        f"labels from {', '.join(map(str, data.metadata_paths))}{cache}",
        rank=rank,
    )
    return t


def near_duplicates(table, c, rank: int):
    """Pairs of near-identical images to keep together (None when MERGE_NEAR_DUPLICATES is off).
    Rank 0 computes them and sends them to the others. Fingerprints and pairs are stored beside the
    cache (else in the run folder) and reused while the files are unchanged."""
    if not c.MERGE_NEAR_DUPLICATES:
        return None
    store = c.CACHE_DIR if c.CACHE_DIR and Path(c.CACHE_DIR).is_dir() else c.CHECKPOINT_DIR
    pairs = stored_near_pairs(fingerprints(table["path"], store), store) if rank == 0 else None
    return dist.from_first_rank(pairs)


def make_loaders(table, split, c, rt: Runtime, classes: tuple | None = None):
    """Training and validation loaders, the epoch sampler, the loss, and image names for the history.
    With diagnosis `classes` the training images carry their class index; validation, the sampler
    and every metric keep the melanoma label."""
    is_val = (split["split"] == "val").to_numpy()
    train, val = table[~is_val], table[is_val]
    if train["target"].nunique() < 2:
        raise DataError(f"the training split has only one class ({len(train)} images); need both")
    sampler = EpochSampler(
        train["target"].to_numpy(),
        c.SEED,
        balanced=c.IMBALANCE == "sampler",
        rank=rt.rank,
        world_size=rt.world_size,
        negatives_per_positive=c.NEGATIVES_PER_POSITIVE,
    )
    workers, pin = default_workers(c.NUM_WORKERS), rt.device.type == "cuda"
    spec = InputSpec(c.IMG_SIZE, c.INPUT_FIT, c.COLOUR_CONSTANCY)
    codes = diagnosis_names(train).map({n: k for k, n in enumerate(classes)}) if classes else None
    train_ds = ImageDataset(train["path"], train["target"] if codes is None else codes, spec)
    val_ds = ImageDataset(val["path"], val["target"], spec)
    val_shard = list(range(rt.rank, len(val_ds), rt.world_size))  # each rank a share, gathered after
    drop = len(sampler) > c.BATCH_SIZE  # no 1-image batch for BatchNorm
    train_loader = make_loader(train_ds, c.BATCH_SIZE, sampler, workers, pin, c.PREFETCH_FACTOR, drop)
    val_loader = make_loader(val_ds, c.BATCH_SIZE * 2, val_shard, workers, pin, c.PREFETCH_FACTOR)
    pos_weight = sampler.positive_weight()  # of what an epoch holds: sampled negatives when sampling
    log(split_line(train, val, split, sampler, pos_weight, c), rank=rt.rank)
    names = {"train": train["image_name"].tolist(), "val": val["image_name"].tolist()}
    counts = None if codes is None else np.bincount(codes, minlength=len(classes))
    loss = make_loss(c.IMBALANCE, pos_weight, c.FOCAL_GAMMA, c.LABEL_SMOOTHING, counts)
    if classes:
        shown = dict(zip(classes, counts.tolist(), strict=True))
        log(f"Target: {len(classes)} diagnoses, training images {shown}", rank=rt.rank)
    return train_loader, val_loader, sampler, loss, names


def split_line(train, val, split, sampler: EpochSampler, pos_weight: float, c) -> str:
    """The log line that says how the run split and weighs its images."""
    sampling = (
        f"; each epoch: all {len(sampler.positives):,} melanoma and {sampler.drawn_negatives:,} fresh "
        f"benign images"
        if c.NEGATIVES_PER_POSITIVE
        else ""
    )
    return (
        f"Split: {len(train):,} train / {len(val):,} val images, "
        f"{grouping_description(split)}{merge_summary(split)} "
        f"(saved to {Path(c.CHECKPOINT_DIR) / 'split.csv'}); imbalance: {c.IMBALANCE}"
        + (f" (pos_weight {pos_weight:.1f})" if c.IMBALANCE == "weighted_bce" else "")
        + sampling
    )


def make_optimizer(model, c, steps_per_epoch: int):
    groups = [
        {"params": model.backbone_parameters(), "lr": c.LEARNING_RATE * c.BACKBONE_LR_SCALE},
        {"params": model.head_parameters(), "lr": c.LEARNING_RATE},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=c.WEIGHT_DECAY)
    total = max(1, steps_per_epoch * c.NUM_EPOCHS)
    warmup = max(1, round(c.WARMUP_EPOCHS * steps_per_epoch))

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)


def training_wrapper(model, c, rt: Runtime, world: int, local_rank: int):
    """What the training step calls: compiled and/or DDP-wrapped. Validation and checkpoints use the
    bare model, so compile sees one input shape and saved weights carry no wrapper prefixes."""
    net = torch.compile(model) if c.COMPILE else model
    if world > 1:
        device_ids = [local_rank] if rt.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net


def epoch_record(epoch: int, train: dict, val: dict, lr: float, names: dict) -> dict:
    """One row of training_history.json: plain numbers, None where a metric is undefined."""
    skipped = [names["train"][i] for i in train["skipped"]] + [names["val"][i] for i in val["skipped"]]
    record = {
        "epoch": epoch + 1,
        "train_loss": train["loss"],
        "train_acc": train["accuracy"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_auc": val["auc"],
        "val_sensitivity": val["sensitivity"],
        "val_specificity": val["specificity"],
        "val_pauc": val["pauc"],
        "lr": lr,
        "seconds": train["seconds"] + val["seconds"],
        "train_images_per_s": train["images_per_s"],
        "skipped_files": len(skipped),
        "skipped_examples": skipped[:10],
    }

    def finite(v):  # JSON has no NaN
        return None if not math.isfinite(v) else v

    return {k: finite(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in record.items()}


def print_epoch(r: dict, num_epochs: int, rank: int) -> None:

    def fmt(v):
        return "  n/a " if v is None else f"{v:.4f}"

    log(
        f"Epoch {r['epoch']}/{num_epochs} ({r['seconds']:.1f}s, {r['train_images_per_s']:.0f} img/s)\n"
        f"  Train Loss: {fmt(r['train_loss'])} | Train Acc: {fmt(r['train_acc'])}\n"
        f"  Val Loss: {fmt(r['val_loss'])} | Val Acc: {fmt(r['val_acc'])} | Val AUC: {fmt(r['val_auc'])} | "
        f"Sens: {fmt(r['val_sensitivity'])} | Spec: {fmt(r['val_specificity'])} | "
        f"pAUC(TPR>=0.8): {fmt(r['val_pauc'])}"
        + (
            f"\n  skipped {r['skipped_files']} unreadable files, e.g. {r['skipped_examples'][:3]}"
            if r["skipped_files"]
            else ""
        ),
        rank=rank,
    )


TARGETS = ("melanoma", "diagnosis")
SELECTION = {"auc": "validation ROC AUC", "pauc": "validation partial AUC above TPR 0.8"}


def best_key(record: dict, select_by: str = "auc") -> tuple:
    """Validation AUC (or pAUC); where undefined (one class in a tiny split), lower validation loss."""
    score, loss = record["val_pauc" if select_by == "pauc" else "val_auc"], record["val_loss"]
    return (score if score is not None else -math.inf, -loss if loss is not None else -math.inf)


def report_stop(e: BaseException, last: Path) -> int:
    """A run that stops part-way says why and what was kept: the last finished epoch's last.pth."""
    kept = f"the last good checkpoint, {last}, is intact" if last.is_file() else "no checkpoint was written"
    if isinstance(e, KeyboardInterrupt):
        where = (
            f"{last} holds the last finished epoch; continue with --RESUME=True"
            if last.is_file()
            else "no epoch had finished, so nothing was saved"
        )
        print(f"\nInterrupted: {where}.", file=sys.stderr)
        return 130
    if isinstance(e, OSError) and e.filename is None:  # a full disk, a read-only or vanished folder
        e.filename = last.parent
    advice = " Try a lower LEARNING_RATE." if isinstance(e, NonFiniteLoss) else ""
    print(f"{error_line(e)}. Training stopped; {kept}.{advice}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
