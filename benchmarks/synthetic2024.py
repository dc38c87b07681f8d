"""A synthetic set in the ISIC 2024 layout, for the scale benchmarks: N distinct lesion-like crops
in one HDF5 file, metadata in the 55-column layout, and planted near-copies.

    from synthetic2024 import write_set
    info = write_set(folder, 25_000)      # folder/train-image.hdf5, folder/train-metadata.csv

Images are 110-150 px JPEGs like the ISIC 2024 crops: skin-toned, a random coarse texture (what
makes every image distinct) and a darker lesion of random shape and place. A share of them gets a
near-copy under another id: flipped, transposed, rotated, resized to another aspect ratio or
re-encoded, always as a new JPEG. Metadata rows repeat the real rows of
../shared/isic-real/isic2024/train-metadata.csv when present (else a generated row) with unique ids,
about 16 images per patient and ISIC 2024's 0.1% melanoma rate (at least 25 melanomas).
"""

from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared/isic-real/isic2024/train-metadata.csv"
COPY_KINDS = ("flip", "transpose", "rotate", "resize", "re-encode")
IMAGES_PER_PATIENT = 16
MELANOMA_RATE = 0.001


def lesion_crop(seed: int) -> np.ndarray:
    """One distinct 110-150 px RGB crop; the same seed gives the same image."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(110, 151, 2))
    skin = np.array([rng.uniform(170, 230), rng.uniform(120, 170), rng.uniform(100, 150)])
    coarse = rng.normal(0, 16, (6, 6, 1)) + rng.normal(0, 5, (6, 6, 3))  # mostly light and dark
    image = skin + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx, angle = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w, rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / rx
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / ry
    lesion = np.clip(1.5 - np.hypot(u, v), 0, 1)[..., None]
    image = image * (1 - 0.6 * lesion) + rng.normal(0, 6, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def near_copy(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "flip":
        return image[:, ::-1] if rng.random() < 0.5 else image[::-1]
    if kind == "transpose":
        return image.transpose(1, 0, 2)
    if kind == "rotate":
        return np.rot90(image, int(rng.integers(1, 4)))
    if kind == "resize":
        h, w = image.shape[:2]
        size = (int(w * rng.uniform(0.6, 1.6)), int(h * rng.uniform(0.6, 1.6)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image  # re-encode: only the new JPEG below


def jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return data.tobytes()


def _encode(job: tuple[int, str | None]) -> bytes:
    seed, kind = job
    image = lesion_crop(seed)
    if kind is None:
        return jpeg(image, 90)
    rng = np.random.default_rng(10_000_000 + seed)
    return jpeg(near_copy(image, kind, rng), int(rng.integers(60, 86)))


def metadata_rows(ids: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    if REAL_METADATA.is_file():
        real = pd.read_csv(REAL_METADATA, dtype=str, keep_default_na=False)
        rows = real.iloc[np.arange(len(ids)) % len(real)].reset_index(drop=True)
    else:  # the columns that are read, when the shared sample is absent
        rows = pd.DataFrame(
            {"age_approx": "55.0", "sex": "female", "anatom_site_general": "posterior torso"},
            index=range(len(ids)),
        )
    rows["isic_id"] = ids
    rows["patient_id"] = [f"IP_{i // IMAGES_PER_PATIENT:07d}" for i in range(len(ids))]
    rate = max(MELANOMA_RATE, 25 / len(ids))  # enough melanomas for 5 folds in a small set
    rows["target"] = (rng.random(len(ids)) < rate).astype(int)
    return rows


def write_set(folder: str | Path, n: int, copy_share: float = 0.02, seed: int = 0, workers: int = 0) -> dict:
    """Write `n` images (originals plus planted copies); returns the paths and the planted pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    copies = int(round(n * copy_share))
    originals = n - copies
    copied = rng.choice(originals, copies, replace=False)
    kinds = [COPY_KINDS[k % len(COPY_KINDS)] for k in range(copies)]
    jobs = [(seed * 100_000_000 + i, None) for i in range(originals)]
    jobs += [(seed * 100_000_000 + int(i), kind) for i, kind in zip(copied, kinds, strict=True)]
    order = rng.permutation(n)  # copies are not all at the end of the file
    ids = [f"ISIC_{9_000_000 + int(k):07d}" for k in order]
    hdf5 = folder / "train-image.hdf5"
    with Pool(workers or os.cpu_count()) as pool, h5py.File(hdf5, "w") as f:
        for name, data in zip(ids, pool.imap(_encode, jobs, chunksize=256), strict=True):
            f[name] = np.bytes_(data)  # the ISIC 2024 layout: one bytes scalar per image
    metadata = folder / "train-metadata.csv"
    metadata_rows(ids, seed).to_csv(metadata, index=False)
    planted = pd.DataFrame(
        {"original": [ids[int(i)] for i in copied], "copy": ids[originals:], "kind": kinds}
    )
    return {"hdf5": hdf5, "metadata": metadata, "planted": planted}
