"""Where and how tensors run, for training, evaluation and prediction alike: the one device policy,
the autocast dtype, and the batched prediction loop (gathered across DDP ranks)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from src.core import distributed as dist
from src.data.loader import ImageDataset, default_workers, make_loader
from src.data.transforms import InputSpec, dihedral_views


def amp_dtype_for(amp: bool) -> torch.dtype | None:
    """The CUDA autocast dtype for the AMP setting: bf16 where the GPU has it, else fp16."""
    if not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def pick_device(local_rank: int = 0) -> torch.device:
    """The one device policy, for training and inference alike: CUDA, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Runtime:
    """Where and how tensors run; shared by training, evaluation and prediction."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: full fp32
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None
    rank: int = 0
    world_size: int = 1

    @classmethod
    def for_training(
        cls, amp: bool, channels_last: bool, rank: int = 0, world_size: int = 1, local_rank: int = 0
    ) -> Runtime:
        device = pick_device(local_rank)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        dtype = amp_dtype_for(amp) if device.type == "cuda" else None
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(device, dtype, channels_last and device.type == "cuda", scaler, rank, world_size)

    @classmethod
    def for_inference(cls, checkpoint: dict | None = None, local_rank: int = 0) -> Runtime:
        """The training policy's device, with the autocast dtype the training run validated with (its
        AMP setting). Evaluation and prediction share it, so they compute the same probabilities as
        each other and as the training history."""
        device = pick_device(local_rank)
        amp = (checkpoint or {}).get("config", {}).get("AMP", True)
        return cls(device, amp_dtype_for(bool(amp)) if device.type == "cuda" else None)

    def describe(self) -> str:
        name = (
            torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else f"{torch.get_num_threads()} threads"
        )
        return (
            f"{self.device.type} ({name}), autocast: {self.amp_dtype or 'off'}, channels_last: "
            f"{self.channels_last}, processes: {self.world_size}"
        )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def transfer(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 from (pinned) host memory to the device, then float there: 4x fewer bytes on the bus."""
        return images.to(self.device, non_blocking=True).float()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return self.layout(self.transfer(images))


def view_logits(model, x: torch.Tensor, tta: bool, features: bool = False):
    """(V, N) logits of the views of a batch (its 8 flips and transposes with tta, else the batch
    itself) and, with `features`, the pooled features of the unflipped view, else None. The one
    place evaluation and prediction turn a batch into logits; call it under the autocast policy."""
    views = dihedral_views(x) if tta else [x]
    first, pooled = model.logits_and_features(views[0]) if features else (model(views[0]), None)
    return torch.stack([first.float()] + [model(v).float() for v in views[1:]]), pooled


@torch.no_grad()
def predict(
    model, loader, rt: Runtime, tta: bool = False, desc: str = "val", features: bool = False, distance=None
) -> dict:
    """Logits for every sample of `loader` (gathered across DDP ranks), with targets, indices, ok
    flags, the quality gate's rule codes when the dataset has a gate ("rules"), with tta the spread
    (standard deviation) of the 8 views' logits ("spread"), with `features` the pooled features
    of the unflipped view, and with a `distance` module (familiarity.Familiarity) their distance,
    batch by batch ("unfamiliarity"): N numbers kept instead of N x D features."""
    model.eval()
    distance = distance.to(rt.device) if distance is not None else None
    keys = ("logits", "targets", "index", "ok", "rules", "features", "spread", "unfamiliarity")
    out = {key: [] for key in keys}
    for batch in tqdm(loader, desc=desc, unit="batch", disable=rt.rank != 0, leave=False, dynamic_ncols=True):
        with rt.autocast():
            views, pooled = view_logits(model, rt.to_device(batch[0]), tta, features or distance is not None)
        out["logits"].append(views.mean(0).cpu())
        if tta:
            out["spread"].append(views.std(0, unbiased=False).cpu())
        for key, value in zip(("targets", "index", "ok", "rules"), batch[1:], strict=False):
            out[key].append(value)
        if features:
            out["features"].append(pooled.float().cpu())
        if distance is not None:
            out["unfamiliarity"].append(distance(pooled.float()).cpu())
    local = {k: torch.cat(v).numpy() for k, v in out.items() if v}
    local = {k: local.get(k, np.zeros(0)) for k in ("logits", "targets", "index", "ok")} | local
    merged = dist.gather_arrays(local)
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def logits_for_table(
    model,
    ckpt: dict,
    table: pd.DataFrame,
    batch_size: int,
    workers,
    tta: bool,
    gate=None,
    features=False,
    distance=None,
) -> dict:
    """Logits for every image of `table` (its path and target columns), computed as the run did;
    with a quality `gate`, its rule codes; with `features`, the pooled features; with a `distance`
    module, their distance (see predict)."""
    rt = Runtime.for_inference(ckpt)
    model = model.to(rt.device)
    loader = make_loader(
        ImageDataset(table["path"], table["target"], InputSpec.of(ckpt), gate),
        batch_size,
        workers=default_workers(workers),
        pin_memory=rt.device.type == "cuda",
    )
    return predict(model, loader, rt, tta=tta, desc="evaluate", features=features, distance=distance)
