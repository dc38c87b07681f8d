"""DistributedDataParallel plumbing for torchrun (NCCL on GPUs, gloo on CPU); no-ops in a single process."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def setup() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    tdist.init_process_group(backend=backend)
    return tdist.get_rank(), tdist.get_world_size(), local_rank


def local_processes() -> int:
    """How many processes torchrun started on this machine (they share its cores)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cleanup() -> None:
    if is_distributed():
        tdist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        tdist.all_reduce(t)
    return t


def from_first_rank(obj):
    """Rank 0's `obj` on every rank (what the others pass is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather_lists(items: list) -> list:
    if not is_distributed():
        return items
    parts = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def gather_arrays(arrays: dict) -> dict:
    """Concatenate each rank's numpy arrays (same keys) on every rank."""
    if not is_distributed():
        return arrays
    parts = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats drift apart in each rank's last
    forward pass), so that all ranks evaluate exactly the model rank 0 saves."""
    if is_distributed():
        for buffer in model.buffers():
            tdist.broadcast(buffer, 0)
