"""One training epoch and one validation pass, each returning a dict of figures.

The data workers only decode and crop; here the uint8 batch goes to the device (pinned, non-blocking),
is augmented there in one batched call, and the model normalises it. Loss and accuracy are summed
on the device and read back every LOG_EVERY steps, not every step, so the GPU is never stalled by
a host sync per batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from src.core import distributed as dist
from src.core.metrics import epoch_metrics, sigmoid
from src.core.model import melanoma_logit
from src.core.runtime import Runtime, predict
from src.data.transforms import augment_batch
from src.errors import ProjectError

LOG_EVERY = 20  # steps between progress-bar updates (each one is a device->host sync)


class NonFiniteLoss(ProjectError, RuntimeError):
    pass


def focal_loss(logits, targets, gamma: float = 2.0):
    """Per-sample focal loss: easy (confident, correct) examples count less, rare hard ones more.
    No class weight on top: the focusing term already answers the imbalance, and the full
    benign/melanoma ratio (about 55 on ISIC 2020) on top of it would swamp the benign lesions."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_correct = torch.exp(-bce)
    return (1 - p_correct) ** gamma * bce


IMBALANCE_CHOICES = ("weighted_bce", "focal", "sampler", "none")


def make_loss(kind: str, pos_weight: float, gamma: float, smoothing: float = 0.0, class_counts=None):
    """Per-sample loss function for the IMBALANCE setting: of (N,) melanoma logits and 0/1 targets,
    or with class_counts (TARGET="diagnosis") of (N, C) class logits and class indices. For the
    diagnoses, "weighted_bce" weighs each class by N / (C * its count), the same balance as
    pos_weight; label smoothing pulls 0/1 targets towards 0.5, class targets towards uniform."""
    if kind not in IMBALANCE_CHOICES:
        raise ValueError(f"IMBALANCE must be one of {IMBALANCE_CHOICES}, not {kind!r}")
    if class_counts is not None:
        return diagnosis_loss(kind, gamma, smoothing, class_counts)
    weight = torch.tensor(pos_weight) if kind == "weighted_bce" else None

    def loss(z, y):
        y = y * (1 - smoothing) + smoothing / 2
        if kind == "focal":
            return focal_loss(z, y, gamma)
        return F.binary_cross_entropy_with_logits(
            z, y, pos_weight=None if weight is None else weight.to(z.device), reduction="none"
        )

    return loss


def diagnosis_loss(kind: str, gamma: float, smoothing: float, class_counts):
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64)).clamp(min=1)
    weights = (counts.sum() / (len(counts) * counts)).float() if kind == "weighted_bce" else None

    def loss(z, y):
        w = None if weights is None else weights.to(z.device)
        ce = F.cross_entropy(z, y.long(), weight=w, label_smoothing=smoothing, reduction="none")
        if kind != "focal":
            return ce
        p_true = torch.softmax(z, dim=1).gather(1, y.long()[:, None])[:, 0]
        return (1 - p_true) ** gamma * ce

    return loss


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    # Summed over ranks, so that every rank sees the same value and all stop together.
    total = dist.all_reduce_sum(loss_sum.reshape(1)).item()
    if not math.isfinite(total):
        raise NonFiniteLoss(f"the training loss became {total} in epoch {epoch + 1} by step {step + 1}")


@dataclass
class StepOptions:
    """How a batch becomes an optimizer step (train.py's GRAD_CLIP, ACCUMULATE_STEPS, TARGET)."""

    grad_clip: float = 0.0  # > 0: clip the global gradient norm to this
    accumulate: int = 1  # batches whose gradients add up to one step
    melanoma_class: int | None = None  # TARGET="diagnosis": targets are class indices, this one melanoma


class WeightAverage:
    """An exponential moving average of the bare model's weights (and buffers), updated after each
    optimizer step; validated and saved as the model when EMA_DECAY > 0 (timm's ModelEmaV3 idea,
    with torch's own AveragedModel)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.source = model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    def update(self) -> None:
        self.averaged.update_parameters(self.source)


def _step(optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float) -> None:
    """One optimizer step from the summed gradients; fp16 autocast needs the gradient scaler (its
    gradients are unscaled before clipping), bf16 and fp32 do not."""
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` (the last, shorter group still steps)."""
    return -(-batches // accumulate)


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    loss_fn,
    rt: Runtime,
    epoch: int,
    seed: int,
    max_steps: int = 0,
    options: StepOptions | None = None,
    ema: WeightAverage | None = None,
    on_progress=None,
) -> dict:
    """One pass over `loader` (at most max_steps batches); on_progress(step, loss, images/s) is
    called with the running figures every LOG_EVERY steps (the TensorBoard log)."""
    options = options or StepOptions()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    # Augmentation randomness from (seed, epoch) alone: a resumed run repeats it exactly.
    gen = torch.Generator(device=rt.device).manual_seed(seed * 1009 + epoch)
    sums = torch.zeros(3, device=rt.device, dtype=torch.float64)  # loss * n, correct, n
    skipped: list[int] = []
    total = min(len(loader), max_steps) if max_steps else len(loader)
    bar = tqdm(loader, total=total, desc=f"train {epoch + 1}", unit="batch", disable=rt.rank != 0,
               leave=False, dynamic_ncols=True)  # fmt: skip
    start, step = time.perf_counter(), -1
    for step, (images, targets, index, ok) in enumerate(bar):
        if step >= total:
            break
        if not bool(ok.all()):
            skipped += index[~ok].tolist()
        x = rt.layout(augment_batch(rt.transfer(images), gen))  # augmentation returns NCHW
        w = ok.to(rt.device, non_blocking=True).float()  # a failed decode weighs nothing
        sums += _backward(model, x, targets.to(rt.device, non_blocking=True), w, loss_fn, rt, options)
        if (step + 1) % options.accumulate == 0 or step + 1 == total:
            _step(optimizer, rt.scaler, options.grad_clip)
            scheduler.step()
            if ema is not None:
                ema.update()
        if step % LOG_EVERY == 0:
            _check_finite(sums[0], epoch, step)
            seen = sums[2].item() * rt.world_size
            running, speed = sums[0].item() / max(sums[2].item(), 1), seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{running:.4f}", img_s=f"{speed:.0f}")
            if on_progress is not None:
                on_progress(step, running, speed)
    _check_finite(sums[0], epoch, step)
    return _epoch_figures(dist.all_reduce_sum(sums), dist.gather_lists(skipped), time.perf_counter() - start)


def _backward(model, x, y, w, loss_fn, rt: Runtime, options: StepOptions) -> torch.Tensor:
    """Forward and backward of one batch (its gradient a 1/accumulate share of a step); returns
    (loss x n, melanoma answers right, n) of the batch, weighted by w."""
    k = options.melanoma_class
    with rt.autocast():
        out = model(x, all_classes=k is not None).float()
    loss = (loss_fn(out, y) * w).sum() / w.sum().clamp(min=1.0)
    logits, y = (out, y) if k is None else (melanoma_logit(out, k), (y == k).float())
    scaled = loss / options.accumulate
    (scaled if rt.scaler is None else rt.scaler.scale(scaled)).backward()
    return torch.stack([loss.detach() * w.sum(), (((logits > 0) == (y > 0.5)) * w).sum(), w.sum()])


def _epoch_figures(sums: torch.Tensor, skipped: list[int], seconds: float) -> dict:
    n = max(sums[2].item(), 1.0)
    return {
        "loss": sums[0].item() / n,
        "accuracy": sums[1].item() / n,
        "images": int(sums[2].item()),
        "seconds": seconds,
        "images_per_s": (sums[2].item() + len(skipped)) / seconds,
        "skipped": skipped,
    }


def validate(model, loader, rt: Runtime, threshold: float = 0.5, tta: bool = False) -> dict:
    """Validation loss and epoch metrics over the whole validation set (every rank's share)."""
    start = time.perf_counter()
    pred = predict(model, loader, rt, tta)
    ok = pred["ok"].astype(bool)
    logits, targets = pred["logits"][ok], pred["targets"][ok]
    loss = (
        F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets)).item()
        if ok.any()
        else math.nan
    )
    probs = sigmoid(logits)
    skipped = pred["index"][~ok].tolist()
    return {
        "loss": loss,
        **epoch_metrics(targets, probs, threshold),
        "skipped": skipped,
        "probs": probs,
        "targets": targets,
        "index": pred["index"][ok],
        "seconds": time.perf_counter() - start,
    }
