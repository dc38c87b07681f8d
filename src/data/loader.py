"""The ISIC Dataset and DataLoader that feed train.py: workers decode and crop; augmentation and
normalisation happen on the device.

Per-image state lives in a few numpy arrays (paths as one bytes array, targets as float32), not in
per-row Python objects: forked workers then share those pages instead of slowly copying them as
reference counts change, so worker memory stays flat over an epoch.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.data.images import ImageDecodeError
from src.data.quality import check, decode_measured
from src.data.transforms import InputSpec, as_spec, load_input, preprocess


class ImageDataset(Dataset):
    """Returns (uint8 image (3, S, S), target, index, ok). A file that fails to decode gives ok=False
    and a black image, so that one bad JPEG skips one sample instead of killing the epoch.
    With a quality `gate` (src/data/quality.py) it also returns which rule the image breaks: its
    position in the gate plus one, 0 when it is assessable, -1 when it could not be read; the
    measures are taken from the very pixels the model gets, decoded once."""

    def __init__(self, paths, targets, spec: int | InputSpec, gate: dict | None = None):
        self.paths = np.array([os.fsencode(str(p)) for p in paths], dtype=np.bytes_)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.spec, self.gate = as_spec(spec), gate
        self.img_size = self.spec.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = os.fsdecode(self.paths[index])
        rule = -1
        try:
            if self.gate is None:
                image = load_input(path, self.spec)
            else:
                rgb, values = decode_measured(path, self.img_size)  # the pixels load_input decodes
                broken = check(self.gate, values)
                rule = list(self.gate).index(broken) + 1 if broken else 0
                image = preprocess(rgb, self.spec)
            ok = True
        except (ImageDecodeError, OSError, ValueError):
            image, ok = torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), False
        item = (image, torch.tensor(self.targets[index]), index, ok)
        return item if self.gate is None else (*item, rule)


class EpochSampler(Sampler):
    """Shuffled (or class-balanced, or negative-sampled) indices, reseeded each epoch and split
    across DDP ranks.

    Seeding from (seed, epoch) makes an epoch's order independent of what ran before, so a resumed
    run sees exactly the batches an uninterrupted one would have. Each rank gets the same number
    of samples (padded by wrapping around), as DistributedSampler does, so ranks never wait forever.
    With `negatives_per_positive` K > 0, an epoch is every positive plus K times as many negatives,
    drawn afresh each epoch without replacement (ISIC 2024 has 0.1% positives: a full pass over the
    negatives per epoch would show the model each melanoma once per 1,000 benign images).
    """

    def __init__(
        self,
        targets,
        seed: int,
        balanced: bool = False,
        rank: int = 0,
        world_size: int = 1,
        negatives_per_positive: int = 0,
    ):
        self.targets = np.asarray(targets)
        self.seed, self.balanced, self.rank, self.world_size = seed, balanced, rank, world_size
        self.epoch = 0
        self.positives = np.flatnonzero(self.targets == 1)
        self.negatives = np.flatnonzero(self.targets != 1)
        self.drawn_negatives = min(len(self.negatives), negatives_per_positive * len(self.positives))
        sampled = negatives_per_positive > 0
        self.epoch_size = len(self.positives) + self.drawn_negatives if sampled else len(self.targets)
        self.negatives_per_positive = negatives_per_positive
        self.per_rank = -(-self.epoch_size // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = self.epoch_size
        if self.negatives_per_positive > 0:
            fresh = torch.randperm(len(self.negatives), generator=gen)[: self.drawn_negatives].numpy()
            chosen = torch.as_tensor(np.concatenate([self.positives, self.negatives[fresh]]))
            order = chosen[torch.randperm(n, generator=gen)]
        elif self.balanced:
            # Each class drawn with equal probability: melanoma seen as often as benign.
            counts = np.bincount(self.targets.astype(np.int64), minlength=2).astype(np.float64)
            weights = torch.as_tensor(1.0 / counts[self.targets.astype(np.int64)])
            order = torch.multinomial(weights, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        total = self.per_rank * self.world_size
        order = torch.cat([order, order[: total - n]]) if total > n else order
        return order[self.rank : total : self.world_size].tolist()

    def positive_weight(self) -> float:
        """Negatives per positive in an epoch: the pos_weight that balances the loss on what it sees."""
        negatives = self.drawn_negatives if self.negatives_per_positive > 0 else len(self.negatives)
        return negatives / max(len(self.positives), 1)

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank


def default_workers(requested: int = -1, processes: int = 1) -> int:
    """DataLoader processes; -1: three quarters of the CPU cores (shared by `processes` processes on
    this machine), at most 12. The main process needs cores too (it launches every CUDA kernel), so
    one worker per core is slower than fewer (measured: docs/performance.md)."""
    if requested >= 0:
        return requested
    return min(12, max(1, (os.cpu_count() or 1) * 3 // 4 // max(1, processes)))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    sampler=None,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    drop_last: bool = False,
    batch_sampler=None,
) -> DataLoader:
    """Batches of `batch_size` in the sampler's order, or exactly the given `batch_sampler` batches."""
    extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if workers > 0 else {}
    if batch_sampler is not None:
        extra["batch_sampler"] = batch_sampler
    else:
        extra.update(batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last)
    return DataLoader(dataset, num_workers=workers, pin_memory=pin_memory, **extra)
