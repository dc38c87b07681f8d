"""Near-duplicate detection speed: fingerprinting from a 256 px cache, and pairing ISIC 2020's count.

    python benchmarks/dedup.py [--images 3000] [--pairs 33126] [--workers 0]

Prints one JSON line per measurement. Fingerprints: a synthetic 256 px cache made with the
throughput benchmark's generator (the real originals in ../shared/isic-real are used too when
present). Pairing: 33,126 fingerprints (the ISIC 2020 training set's size), from real images
repeated with small noise when available, else random, through the same near_pairs() that
training and dedup.py call. Goals: at least 300 images/s on 2 cores, pairing under a minute.
Growth with the set's size: benchmarks/scale.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from throughput import make_cache  # benchmarks/ is the script's folder

from src.data.dedup import DIM, fingerprints, near_pairs
from src.data.images import index_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "isic-real" / "images"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def timed_fingerprints(paths: list[str], source: str, workers: int) -> np.ndarray:
    start = time.perf_counter()
    vectors = fingerprints(paths, None, workers, progress=False)
    seconds = time.perf_counter() - start
    emit(
        {
            "bench": "fingerprint",
            "source": source,
            "images": len(paths),
            "workers": workers or "one per core",
            "images_per_s": round(len(paths) / seconds, 1),
        }
    )
    return vectors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000, help="synthetic 256 px cache images to fingerprint")
    ap.add_argument("--pairs", type=int, default=33126, help="fingerprints to pair")
    ap.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths, _ = make_cache(Path(tmp), args.images, 256)
        vectors = timed_fingerprints(paths, "synthetic 256 px cache", args.workers)
    real = sorted(index_images(SHARED / "isic2017_256").values()) if SHARED.is_dir() else []
    if real:
        vectors = timed_fingerprints(real, "real ISIC 2017 256x256", args.workers)
    rng = np.random.default_rng(0)
    base = vectors[np.isfinite(vectors[:, 0])] if len(vectors) else rng.standard_normal((1000, DIM))
    many = base[rng.integers(0, len(base), args.pairs)] + rng.normal(0, 0.05, (args.pairs, DIM))
    many = (many / np.linalg.norm(many, axis=1, keepdims=True)).astype(np.float32)
    start = time.perf_counter()
    pairs = near_pairs(many)
    emit(
        {
            "bench": "pairing",
            "fingerprints": args.pairs,
            "pairs_found": len(pairs),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
