"""Throughput benchmark: decoding/prepare on the CPU, and model / data / end-to-end training speed.

    python benchmarks/throughput.py --only prepare            # decode ratios + prepare images/s
    python benchmarks/throughput.py --only model,data,e2e     # training path (CUDA if available)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np

from src.data.demo import draw_image
from src.data.images import decode_image, index_images, naive_decode
from src.data.prepare import prepare_cache

SHARED_FULLRES = ROOT.parent / "shared" / "isic-real" / "images" / "isic_archive_fullres"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def make_large_jpegs(folder: Path, count: int, width: int = 6000, height: int = 4000) -> list[Path]:
    """Big JPEGs with photo-like entropy: a drawn lesion upscaled, plus sensor-like noise."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = draw_image(rng, melanoma=bool(i % 2), h=400, w=600)
        big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        big = np.clip(big + rng.normal(0, 5, big.shape), 0, 255).astype(np.uint8)
        path = folder / f"ISIC_{8000000 + i:07d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_per_image(fn, paths, short_side: int, repeat: int) -> float:
    fn(paths[0], short_side)  # warm-up: first-call allocations and library loading
    start = time.perf_counter()
    for _ in range(repeat):
        for path in paths:
            fn(path, short_side)
    return (time.perf_counter() - start) / (repeat * len(paths))


def bench_decode(name: str, paths: list[Path], short_side: int, repeat: int) -> None:
    """Reduced vs naive decode+resize on one core (cv2 threads off, as in a DataLoader worker)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        reduced = time_per_image(decode_image, paths, short_side, repeat)
        naive = time_per_image(naive_decode, paths, short_side, repeat)
    finally:
        cv2.setNumThreads(threads)
    emit({"bench": "decode", "set": name, "images": len(paths), "short_side": short_side,
          "reduced_ms": round(reduced * 1e3, 2), "naive_ms": round(naive * 1e3, 2),
          "ratio": round(naive / reduced, 2), "reduced_images_per_s_per_core": round(1 / reduced, 1)})


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
        bench_decode("shared ISIC originals (<=3872x2592)", real, args.short_side, 1)
        bench_prepare("shared ISIC originals (<=3872x2592)", SHARED_FULLRES, args.short_side, args.workers)
    else:
        emit({"bench": "decode", "set": "shared ISIC originals", "skipped": f"{SHARED_FULLRES} not found"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="prepare,model,data,e2e", help="comma-separated sections")
    p.add_argument("--large-images", type=int, default=8, help="generated 6000x4000 JPEGs")
    p.add_argument("--short-side", type=int, default=256, help="decode/prepare target short side")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="prepare processes (0: one per core)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sections = set(args.only.split(","))
    if "prepare" in sections:
        run_prepare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
