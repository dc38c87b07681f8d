"""Resize the originals once into a cache, so training decodes small JPEGs instead of 6000x4000 ones.

    python src/data/prepare.py [--images data/isic] [--out data/cache] [--size 512] [--workers N]

Every core works (one process each); a tqdm bar shows progress. Resumable: files already in the
cache are skipped, unless their original changed since (size or modification time, recorded in
OUT/sources.csv). Each file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written JPEG. Unreadable originals are listed in OUT/unreadable.csv and skipped.
Training (train.py CACHE_DIR) uses the cache when its size is at least IMG_SIZE.
The cache is a small fraction of the originals' size (measured: docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from src.data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from src.data.images import ImageDecodeError, decode_image, decoding_pool, file_stamp, index_images
from src.data.labels import CACHE_INFO
from src.errors import ProjectError, command

JPEG_QUALITY = 95  # high: the cache feeds training, and re-encoding artefacts would be learned


class PrepareError(ProjectError):
    pass


def prepare_one(task: tuple[str, str, int]) -> tuple[str, str | None]:
    """Resize one original into the cache; returns (source, error or None)."""
    src, dst, size = task
    try:
        rgb = decode_image(src, min_short_side=size)
    except ImageDecodeError as e:
        return src, str(e).split(": ", 1)[-1]
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        return src, "could not encode"
    atomic_write_bytes(dst, jpeg.tobytes())
    return src, None


def check_cache_size(out: Path, size: int) -> None:
    info = out / CACHE_INFO
    if info.is_file():
        old = json.loads(info.read_text()).get("size")
        if old != size:
            raise PrepareError(f"{out} already holds a {old} px cache; use another --out for {size} px")


SOURCES = "sources.csv"  # key,size,mtime_ns of the original each cached file was made from


def read_sources(out_dir: Path) -> dict[str, tuple[int, int]]:
    path = out_dir / SOURCES
    if not path.is_file():
        return {}
    rows = [line.rsplit(",", 2) for line in path.read_text().splitlines()[1:] if line.count(",") >= 2]
    return {key: (int(size), int(mtime)) for key, size, mtime in rows}


def write_sources(out_dir: Path, sources: dict[str, tuple[int, int]]) -> None:
    lines = ["key,size,mtime_ns"] + [f"{k},{size},{mtime}" for k, (size, mtime) in sorted(sources.items())]
    atomic_write_text(out_dir / SOURCES, "\n".join(lines) + "\n")


def stale_or_missing(originals: dict[str, str], out_dir: Path, sources: dict) -> dict[str, tuple[int, int]]:
    """key -> (size, mtime) of every original whose cached copy is missing or was made from another
    version of the file (changed size or modification time), so an edited original is re-cached."""
    todo = {}
    for key, src in originals.items():
        try:
            current = file_stamp(src)
        except OSError:
            current = (-1, -1)  # unreadable: prepare_one reports why
        if sources.get(key) != current or not (out_dir / f"{key}.jpg").exists():
            todo[key] = current
    return todo


def prepare_cache(images: str, out: str, size: int = 512, workers: int = 0, progress: bool = True) -> dict:
    """Fill the cache; returns counts and throughput."""
    out_dir = Path(out)
    originals = index_images(images)
    if not originals:
        raise PrepareError(f"no .jpg/.jpeg/.png images in {images}/ (or one folder below)")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_cache_size(out_dir, size)
    atomic_write_json(out_dir / CACHE_INFO, {"size": size, "source": str(images), "quality": JPEG_QUALITY})
    sources = read_sources(out_dir)
    todo = stale_or_missing(originals, out_dir, sources)
    tasks = [(originals[key], str(out_dir / f"{key}.jpg"), size) for key in todo]
    start, failed = time.perf_counter(), {}
    with decoding_pool(workers) as pool:
        results = pool.imap_unordered(prepare_one, tasks, chunksize=8)
        for src, error in tqdm(
            results, total=len(tasks), desc=f"prepare {size}px", unit="img", disable=not progress
        ):
            if error:
                failed[src] = error
    seconds = time.perf_counter() - start
    keys = {src: key for key, src in originals.items()}
    sources.update({keys[src]: todo[keys[src]] for src, _, _ in tasks if src not in failed})
    for src in failed:  # an older cached copy of a now unreadable original must not stand in for it
        (out_dir / f"{keys[src]}.jpg").unlink(missing_ok=True)
    write_sources(
        out_dir, {k: v for k, v in sources.items() if k in originals and originals[k] not in failed}
    )
    report_unreadable(out_dir, failed)
    done = len(tasks) - len(failed)
    return {
        "images": len(originals),
        "written": done,
        "skipped_existing": len(originals) - len(tasks),
        "unreadable": len(failed),
        "seconds": round(seconds, 2),
        "images_per_s": round(done / seconds, 1) if seconds > 0 and done else None,
    }


def report_unreadable(out_dir: Path, failed: dict[str, str]) -> None:
    """unreadable.csv lists this run's failures; with none, an old list (of since fixed files) is removed."""
    if failed:
        lines = ["path,error"] + [f'"{p}","{e}"' for p, e in sorted(failed.items())]
        atomic_write_text(out_dir / "unreadable.csv", "\n".join(lines) + "\n")
    else:
        (out_dir / "unreadable.csv").unlink(missing_ok=True)


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Resize ISIC originals into a training cache.")
    parser.add_argument("--images", default="data/isic")
    parser.add_argument("--out", default="data/cache")
    parser.add_argument("--size", type=int, default=512, help="short side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    args = parser.parse_args(argv)
    stats = prepare_cache(args.images, args.out, args.size, args.workers)
    rate = f", {stats['images_per_s']} images/s" if stats["images_per_s"] is not None else ""
    print(
        f"{stats['written']} written, {stats['skipped_existing']} already there, "
        f"{stats['unreadable']} unreadable{rate}"
    )
    if stats["unreadable"]:
        print(f"unreadable originals listed in {Path(args.out) / 'unreadable.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
