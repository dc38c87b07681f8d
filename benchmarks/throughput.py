"""Throughput benchmark: decoding/prepare on the CPU, and model / data / end-to-end training speed.

    python benchmarks/throughput.py --only prepare            # decode ratios + prepare images/s
    python benchmarks/throughput.py --only model,data,e2e     # training path (CUDA if available)
    python benchmarks/throughput.py --only loader --batch 256 --img-size 224 --cache-size 256
                                                              # CPU workers alone: sizes NUM_WORKERS
    python benchmarks/throughput.py                           # everything

Prints one JSON object per line. Uses the project's real code (src/data, src/training). Generates
its own inputs: 6000x4000 JPEGs like the ISIC 2020 originals, and a synthetic cache for the training
path, so it runs without the ISIC data; the shared real originals are used when present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from src.core.model import build_model
from src.data.atomic import atomic_write_json
from src.data.demo import draw_image
from src.data.images import decode_image, index_images, naive_decode
from src.data.labels import CACHE_INFO
from src.data.loader import EpochSampler, ImageDataset, default_workers, make_loader
from src.data.prepare import prepare_cache
from src.data.transforms import augment_batch
from src.training.engine import Runtime, make_loss, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]

SHARED_FULLRES = ROOT.parent / "shared" / "isic-real" / "images" / "isic_archive_fullres"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def make_large_jpegs(folder: Path, count: int, width: int = 6000, height: int = 4000) -> list[Path]:
    """Big JPEGs with photo-like entropy: a drawn lesion upscaled, plus sensor-like noise."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = draw_image(rng, 0.7 if i % 2 else 0.2, 1.0, 1.0, h=400, w=600)
        big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        big = np.clip(big + rng.normal(0, 5, big.shape), 0, 255).astype(np.uint8)
        path = folder / f"ISIC_{8000000 + i:07d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_per_image(fn, paths, short_side: int, repeat: int) -> float:
    """Seconds per image: the best of `repeat` passes over all files (like timeit, the least disturbed
    pass; the files are in the page cache after the warm-up pass, for both methods alike)."""
    for path in paths:
        fn(path, short_side)  # warm-up pass: page cache, allocations, library loading
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        for path in paths:
            fn(path, short_side)
        passes.append((time.perf_counter() - start) / len(paths))
    return min(passes)


def bench_decode(name: str, paths: list[Path], short_side: int, repeat: int) -> None:
    """Reduced vs naive decode+resize on one core (cv2 threads off, as in a DataLoader worker)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        reduced = time_per_image(decode_image, paths, short_side, repeat)
        naive = time_per_image(naive_decode, paths, short_side, repeat)
    finally:
        cv2.setNumThreads(threads)
    emit(
        {
            "bench": "decode",
            "set": name,
            "images": len(paths),
            "short_side": short_side,
            "reduced_ms": round(reduced * 1e3, 2),
            "naive_ms": round(naive * 1e3, 2),
            "ratio": round(naive / reduced, 2),
            "reduced_images_per_s_per_core": round(1 / reduced, 1),
        }
    )


def bench_prepare(name: str, folder: Path, size: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        stats = prepare_cache(str(folder), out, size=size, workers=workers, progress=False)
    emit({"bench": "prepare", "set": name, "size": size, "workers": workers or os.cpu_count(), **stats})


def run_prepare(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generated = make_large_jpegs(Path(tmp), args.large_images)
        bench_decode("generated 6000x4000", generated, args.short_side, args.repeat)
        bench_prepare("generated 6000x4000", Path(tmp), args.short_side, args.workers)
    if SHARED_FULLRES.is_dir():
        real = sorted(Path(p) for p in index_images(SHARED_FULLRES).values())
        bench_decode("shared ISIC originals (<=3872x2592)", real, args.short_side, args.repeat)
        bench_prepare("shared ISIC originals (<=3872x2592)", SHARED_FULLRES, args.short_side, args.workers)
    else:
        emit({"bench": "decode", "set": "shared ISIC originals", "skipped": f"{SHARED_FULLRES} not found"})


# ----------------------------------------------------------------------------- training data path
def _write_cache_image(task) -> None:
    path, seed, size = task
    rng = np.random.default_rng(seed)
    rgb = draw_image(rng, 0.7 if seed % 5 == 0 else 0.2, 1.0, 1.0, h=size, w=size * 4 // 3)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def make_cache(folder: Path, count: int, size: int) -> tuple[list[str], np.ndarray]:
    """A synthetic prepared cache: `count` JPEGs with short side `size`, as prepare.py writes them."""
    from multiprocessing import Pool

    paths = [folder / f"ISIC_{7000000 + i:07d}.jpg" for i in range(count)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_cache_image, [(p, i, size) for i, p in enumerate(paths)], chunksize=64)
    atomic_write_json(folder / CACHE_INFO, {"size": size, "source": "synthetic benchmark cache"})
    return [str(p) for p in paths], (np.arange(count) % 5 == 0).astype(np.int64)


def runtime(args) -> Runtime:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" and args.amp else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Runtime(device, amp, channels_last=device.type == "cuda")


def training_parts(args, rt: Runtime):
    model = build_model(args.arch, pretrained=False).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    net = torch.compile(model) if args.compile else model
    return net, optimizer, scheduler, make_loss("weighted_bce", 4.0, 2.0)


def timed_epochs(fn, warmup_steps: int, steps: int) -> dict:
    """Run fn(max_steps) once to warm up (cuDNN autotune, compile, worker start), then measure."""
    fn(warmup_steps)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return fn(steps)


def bench_model(args, rt: Runtime) -> dict:
    """Training steps (GPU augmentation, forward, backward, AdamW) on uint8 batches already on the device."""
    net, optimizer, scheduler, loss_fn = training_parts(args, rt)
    batch = (
        torch.randint(
            0, 256, (args.batch, 3, args.img_size, args.img_size), dtype=torch.uint8, device=rt.device
        ),
        torch.randint(0, 2, (args.batch,), device=rt.device).float(),
        torch.arange(args.batch),
        torch.ones(args.batch, dtype=torch.bool),
    )
    stats = timed_epochs(
        lambda n: train_one_epoch(net, [batch] * n, optimizer, scheduler, loss_fn, rt, 0, 0),
        args.warmup_steps,
        args.steps,
    )
    return {"images_per_s": round(stats["images_per_s"], 1)}


def real_loader(args, rt: Runtime, paths, targets):
    dataset = ImageDataset(paths, targets, args.img_size)
    sampler = EpochSampler(targets, seed=0)
    return make_loader(
        dataset, args.batch, sampler, args.workers, rt.device.type == "cuda", args.prefetch, True
    )


def worker_memory_mb(loader_iter) -> list[float]:
    """Private (unshared) resident memory of each DataLoader worker, from /proc (Linux)."""
    sizes = []
    for worker in getattr(loader_iter, "_workers", []):
        try:
            fields = dict(
                line.split(":", 1)
                for line in open(f"/proc/{worker.pid}/smaps_rollup").read().splitlines()[1:]
            )
            kb = sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
            sizes.append(round(kb / 1024, 1))
        except (OSError, KeyError, ValueError):
            pass
    return sizes


def bench_data(args, rt: Runtime, paths, targets) -> dict:
    """The real DataLoader: decode, crop, collate, pinned transfer, GPU augmentation; no model."""
    loader = real_loader(args, rt, paths, targets)
    gen = torch.Generator(device=rt.device).manual_seed(0)
    it = iter(loader)
    for _ in range(min(args.warmup_steps, len(loader) - 1)):
        next(it)
    start_mem, count, start = worker_memory_mb(it), 0, time.perf_counter()
    mid_mem, half = [], (len(loader) - args.warmup_steps) // 2
    for step, (images, *_) in enumerate(it):
        rt.layout(augment_batch(rt.transfer(images), gen))
        count += len(images)
        if step == half:
            mid_mem = worker_memory_mb(it)  # steady state: growth after here would be a leak
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    end_mem = worker_memory_mb(it)
    return {
        "images_per_s": round(count / seconds, 1),
        "images": count,
        "workers": args.workers,
        "worker_private_mb_start": start_mem,
        "worker_private_mb_mid": mid_mem,
        "worker_private_mb_end": end_mem,
    }


def bench_loader(args, paths, targets) -> dict:
    """The DataLoader workers alone (decode, crop, collate; no transfer, no augmentation): the CPU
    side of the data path, which is what has to keep up with a GPU. Images/s per worker tells how
    many cores a given GPU rate needs, measured on a machine without that GPU."""
    loader = make_loader(
        ImageDataset(paths, targets, args.img_size),
        args.batch,
        EpochSampler(targets, seed=0),
        args.workers,
        False,
        args.prefetch,
        True,
    )
    it = iter(loader)
    for _ in range(min(args.warmup_steps, len(loader) - 1)):
        next(it)  # workers started and their prefetch queues full
    count, start = 0, time.perf_counter()
    for images, *_ in it:
        count += len(images)
    rate = count / (time.perf_counter() - start)
    return {
        "images_per_s": round(rate, 1),
        "images": count,
        "workers": args.workers,
        "images_per_s_per_worker": round(rate / args.workers, 1),
    }


def bench_e2e(args, rt: Runtime, paths, targets) -> dict:
    """The real training step fed by the real DataLoader (train_one_epoch, as train.py runs it)."""
    net, optimizer, scheduler, loss_fn = training_parts(args, rt)
    loader = real_loader(args, rt, paths, targets)
    stats = timed_epochs(
        lambda n: train_one_epoch(net, loader, optimizer, scheduler, loss_fn, rt, 0, 0, n),
        args.warmup_steps,
        args.steps,
    )
    out = {"images_per_s": round(stats["images_per_s"], 1)}
    if torch.cuda.is_available():
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def run_training_path(args, sections: set) -> None:
    rt = runtime(args)
    device = (
        torch.cuda.get_device_name()
        if rt.device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    common = {
        "device": device,
        "batch": args.batch,
        "img_size": args.img_size,
        "amp": str(rt.amp_dtype),
        "channels_last": rt.channels_last,
        "compile": args.compile,
        "arch": args.arch,
    }
    model = bench_model(args, rt) if "model" in sections or "e2e" in sections else None
    if model:
        emit({"bench": "model-only", **common, **model})
    if not sections & {"data", "e2e", "loader"}:
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths, targets = make_cache(Path(tmp), args.cache_images, args.cache_size)
        emit(
            {
                "bench": "synthetic cache",
                "images": len(paths),
                "short_side": args.cache_size,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        if "loader" in sections:
            emit(
                {
                    "bench": "loader-only",
                    "device": "cpu workers",
                    "batch": args.batch,
                    "img_size": args.img_size,
                    "cache_size": args.cache_size,
                    **bench_loader(args, paths, targets),
                }
            )
        if "data" in sections:
            emit({"bench": "data-only", **common, **bench_data(args, rt, paths, targets)})
        if "e2e" in sections:
            e2e = bench_e2e(args, rt, paths, targets)
            emit(
                {
                    "bench": "end-to-end",
                    **common,
                    **e2e,
                    "ratio_to_model_only": round(e2e["images_per_s"] / model["images_per_s"], 3),
                }
            )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only",
        default="prepare,model,data,e2e",
        help="comma-separated sections: prepare, model, data, e2e, loader",
    )
    p.add_argument("--large-images", type=int, default=8, help="generated 6000x4000 JPEGs")
    p.add_argument("--short-side", type=int, default=256, help="decode/prepare target short side")
    p.add_argument("--repeat", type=int, default=3, help="timed passes per decode set (best one counts)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="prepare processes / DataLoader workers (0: train.py's default)",
    )
    cuda = torch.cuda.is_available()
    p.add_argument("--batch", type=int, default=256 if cuda else 32)
    p.add_argument("--img-size", type=int, default=224 if cuda else 64)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--steps", type=int, default=60 if cuda else 8, help="measured training steps")
    p.add_argument("--warmup-steps", type=int, default=15 if cuda else 2)
    p.add_argument("--cache-images", type=int, default=20000 if cuda else 800)
    p.add_argument(
        "--cache-size", type=int, default=256 if cuda else 96, help="short side of the synthetic cache"
    )
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--amp", type=int, default=1, help="bf16 autocast on CUDA (1/0)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args(argv)
    args.workers = args.workers or default_workers()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sections = set(args.only.split(","))
    if "prepare" in sections:
        run_prepare(args)
    if sections & {"model", "data", "e2e", "loader"}:
        run_training_path(args, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
