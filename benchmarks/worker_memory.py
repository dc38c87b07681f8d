"""DataLoader worker memory over one pass: the same images inside one HDF5 file and as JPEG files.

    python benchmarks/worker_memory.py                      # 10,000 images, 224 px, 2 workers
    python benchmarks/worker_memory.py --images 2000 --size 64 --workers 1

Writes N ISIC-2024-sized JPEG crops (110-150 px, distinct) into one HDF5 file in the ISIC 2024
layout and beside it as files, reads each set once through src/data/loader.py (ImageDataset,
make_loader), and prints per set the largest memory of any worker (its unique set size: the pages
only it holds, copy-on-write pages it has touched included), that worker's growth over the pass and
the workers' CPU time per image. Fails (exit 1) when a worker reading the HDF5 file ends more than
--limit-mb above the largest worker reading the files: the growth this guards against was about
40 KB per image (docs/performance.md). Takes about a minute at the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from src.data.images import index_images
from src.data.loader import ImageDataset, make_loader


def write_sets(folder: Path, n: int) -> tuple[Path, Path]:
    """(HDF5 file, folder of files) holding the same n JPEG crops."""
    rng = np.random.default_rng(0)
    files, hdf5 = folder / "jpeg", folder / "train-image.hdf5"
    files.mkdir()
    with h5py.File(hdf5, "w") as f:
        for i in range(n):
            h, w = (int(v) for v in rng.integers(110, 151, 2))
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            base = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
            noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
            data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            f[f"ISIC_{i:07d}"] = np.bytes_(data)  # the ISIC 2024 layout: one bytes scalar per image
            (files / f"ISIC_{i:07d}.jpg").write_bytes(data)
    return hdf5, files


def unique_mb(pid: int) -> float:
    kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_pass(source: Path, size: int, workers: int) -> dict:
    """Read every image once; sample each worker's memory every 20 batches."""
    paths = sorted(index_images(source).values())
    loader = make_loader(ImageDataset(paths, np.zeros(len(paths)), size), 32, workers=workers)
    batches = iter(loader)
    pids = [w.pid for w in batches._workers]
    cpu_before = sum(cpu_seconds(p) for p in pids)
    first, peak, seen, started = None, 0.0, 0, time.time()
    for i, (images, *_) in enumerate(batches):
        seen += len(images)
        if i % 20 == 0 or seen == len(paths):
            now = [unique_mb(p) for p in pids]
            first = first or max(now)
            peak = max(peak, *now)
    ms_per_image = (sum(cpu_seconds(p) for p in pids) - cpu_before) / seen * 1000
    del batches, loader
    return {"images": seen, "first": first, "peak": peak, "ms": ms_per_image, "s": time.time() - started}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=224, help="IMG_SIZE of the loader")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit-mb", type=float, default=100.0)
    args = ap.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").is_file():
        sys.exit("error: needs Linux's /proc/PID/smaps_rollup to read worker memory")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing {args.images:,} JPEG crops, inside one HDF5 file and as files...", flush=True)
        hdf5, files = write_sets(Path(tmp), args.images)
        results = {"HDF5 file": one_pass(hdf5, args.size, args.workers)}
        results["JPEG files"] = one_pass(files, args.size, args.workers)
    print(f"{args.workers} workers, {args.size} px: largest worker (unique MB), first sample -> peak")
    for name, r in results.items():
        print(
            f"  {name:<10}  {r['images']:,} images  {r['first']:6.1f} -> {r['peak']:6.1f} MB  "
            f"{r['ms']:.2f} ms CPU per image (workers)  {r['s']:.1f} s"
        )
    excess = results["HDF5 file"]["peak"] - results["JPEG files"]["peak"]
    print(f"HDF5 workers peak {excess:+.1f} MB against files (limit +{args.limit_mb:g} MB)")
    return 0 if excess <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
