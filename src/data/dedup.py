"""Find near-duplicate images: the same lesion photo under other names, sizes, crops or orientations.

    python src/data/dedup.py --metadata CSV[,CSV...] --images DIR[,DIR...] [--out data/dedup]

Writes OUT/duplicates.csv (one row per pair: both names, their labels, the similarity and whether
the labels disagree) and OUT/closest_pairs.png (a labelled contact sheet of the closest pairs, for
a person to confirm), and prints the groups found. Training merges near-copies into one split
group (train.py MERGE_NEAR_DUPLICATES), so that a copy never sits on the other side of the
train/validation boundary; evaluation of an external set lists its near-copies of training images.

The fingerprint: the image squashed to 32x32 (so a non-uniform resize to a square changes nothing),
in CIE Lab, and the 8x8 lowest DCT frequencies of each channel without the mean (robust to JPEG
re-encoding, small crops and colour balance). A flip or a transpose of the image only changes the
signs of DCT coefficients or swaps them, so the eight orientations of a square are compared exactly
without recomputing anything. Similarity is the cosine of two fingerprints after subtracting the
set's mean fingerprint, the best over the eight orientations; candidate pairs come from an
approximate nearest-neighbour search (near_pairs), so pairing grows near-linearly. On the shared
real images the 178 pairs of a full-size original and its 256x256 copy all score at least 0.979; the
closest pair between HAM10000 and the other sets scores 0.912, and a 2% crop of each side keeps at
least 0.961 on generated lesions. NEAR_DUPLICATE_SIMILARITY sits between them. Drawings that differ
only in a small blob (the SYNTHETIC demo set) look alike at this scale and do pair up; the demo
preset turns merging off.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from src.data.atomic import UNREADABLE_NPZ, atomic_write_text, replace_atomically
from src.data.images import ImageDecodeError, decode_image, decoding_pool, file_stamp
from src.data.labels import load_labeled_images
from src.data.splits import components
from src.errors import command

NEAR_DUPLICATE_SIMILARITY = 0.94  # cosine of centred fingerprints; see the module docstring
SIDE, K = 32, 8  # squash size and the number of DCT frequencies kept per axis
DIM = 3 * K * K
# Pairing (near_pairs): faiss's HNSW graph over a 64-dimensional projection; measured in
# docs/performance.md (200,000 images: 99.75-99.8% of planted copies found, no false pair).
SEARCH_DIMS, NEIGHBOURS = 64, 16
CHUNK = 65_536  # rows at a time through centring, invariant() and the projection: bounded temporaries
HNSW_LINKS, HNSW_BUILD_DEPTH, HNSW_SEARCH_DEPTH = 16, 80, 64
STORE = "fingerprints.npz"  # beside the cache (or the run): computed once per file version
PAIRS_STORE = "near_pairs.npz"  # beside them: pairs of the last set seen, keyed by its fingerprints


def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """(DIM,) unit-length float32 fingerprint of an RGB uint8 image of any size and aspect ratio."""
    small = cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    parts = []
    for channel in cv2.split(cv2.cvtColor(small, cv2.COLOR_RGB2LAB)):
        dct = cv2.dct(np.ascontiguousarray(channel))[:K, :K].copy()
        dct[0, 0] = 0.0  # the mean: brightness and colour cast differ between copies
        parts.append(dct.reshape(-1) / (np.linalg.norm(dct) + 1e-6))
    v = np.concatenate(parts)
    return (v / (np.linalg.norm(v) + 1e-6)).astype(np.float32)


def _fingerprint_file(path: str) -> np.ndarray | None:
    try:
        return fingerprint(decode_image(path, min_short_side=2 * SIDE))  # reduced JPEG decoding
    except ImageDecodeError:
        return None


def _stamp(path: str) -> tuple[int, int]:
    try:
        return file_stamp(path)
    except OSError:
        return -1, -1


def fingerprints(
    paths, store_dir: str | Path | None = None, workers: int = 0, progress: bool = True
) -> np.ndarray:
    """(N, DIM) fingerprints of `paths` (a row of NaN for an unreadable file), reusing those stored in
    store_dir/fingerprints.npz for files whose size and modification time have not changed."""
    paths = [str(p) for p in paths]
    stamps = [_stamp(p) for p in paths]
    known = _load_store(store_dir)
    out = np.full((len(paths), DIM), np.nan, np.float32)
    todo = []
    for i, (path, stamp) in enumerate(zip(paths, stamps, strict=True)):
        hit = known.get((path, *stamp))
        if hit is not None:
            out[i] = hit
        else:
            todo.append(i)
    if todo:
        with decoding_pool(workers) as pool:
            results = pool.imap(_fingerprint_file, [paths[i] for i in todo], chunksize=32)
            bar = tqdm(
                results, total=len(todo), desc="fingerprints", unit="img", disable=not progress, leave=False
            )
            for i, v in zip(todo, bar, strict=True):
                if v is not None:
                    out[i] = v
        asked = set(paths)  # an older version of an asked file is dropped, other sets' files kept
        known = {key: v for key, v in known.items() if key[0] not in asked}
        known.update({(p, *s): v for p, s, v in zip(paths, stamps, out, strict=True) if not np.isnan(v[0])})
        _save_store(store_dir, known)
    return out


def _load_store(store_dir) -> dict:
    path = Path(store_dir or "") / STORE
    if not store_dir or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = zip(z["paths"].tolist(), z["sizes"].tolist(), z["mtimes"].tolist(), strict=True)
            return {key: v for key, v in zip(keys, z["vectors"], strict=True)}
    except UNREADABLE_NPZ:  # a damaged store is rebuilt, never trusted
        return {}


def _save_store(store_dir, known: dict) -> None:
    if not store_dir:
        return
    keys = list(known)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(
                f,
                paths=np.array([k[0] for k in keys]),
                sizes=np.array([k[1] for k in keys], np.int64),
                mtimes=np.array([k[2] for k in keys], np.int64),
                vectors=np.stack([known[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32),
            )

    replace_atomically(Path(store_dir) / STORE, write)


def _orientations() -> list[tuple[np.ndarray, np.ndarray]]:
    """(permutation, signs) turning a fingerprint into that of the flipped/transposed image."""
    u, v = np.mgrid[0:K, 0:K]  # u: vertical frequency, v: horizontal frequency
    out = []
    for transpose in (False, True):
        for flip_x in (0, 1):
            for flip_y in (0, 1):
                sign = (((-1.0) ** (v * flip_x)) * ((-1.0) ** (u * flip_y))).reshape(-1)
                perm = (v * K + u).reshape(-1) if transpose else np.arange(K * K)
                out.append(
                    (
                        np.concatenate([perm + c * K * K for c in range(3)]),
                        np.tile(sign, 3).astype(np.float32),
                    )
                )
    return out


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Fingerprints minus the set's mean fingerprint, unit length again: what every image of a set
    shares (the dermatoscope's dark vignette, a centred lesion) stops counting as likeness."""
    v = np.nan_to_num(vectors.astype(np.float32), nan=0.0, copy=False)  # one copy, changed in place
    for start in range(0, len(v), CHUNK):
        block = v[start : start + CHUNK]
        block -= mean.astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True) + 1e-6
    v[np.isnan(vectors[:, 0])] = 0.0  # an unreadable file never pairs
    return v


def invariant(v: np.ndarray) -> np.ndarray:
    """A summary of each centred fingerprint that is the same in all 8 orientations, of the same
    length, and never farther apart than the closest orientations of two fingerprints: its cosine is
    at least their best cosine, so it finds every candidate pair the exact score would keep.

    A flip changes the sign of the coefficients with an odd frequency along it; a transpose swaps
    (u, v) with (v, u). Each pair of transposed coefficients (x, y) is turned into two numbers that
    neither changes: (x + y, |x - y|) when u and v are even, (|x + y|, |x - y|) when both are odd,
    (|x| + |y|, ||x| - |y||) otherwise, all divided by sqrt 2 (a rotation, then absolute values:
    lengths kept, distances never grown); on the diagonal, the coefficient, or its absolute value
    where a flip can change its sign."""
    c = v.reshape(len(v), 3, K, K)
    u, w = np.triu_indices(K, 1)
    x, y = c[:, :, u, w], c[:, :, w, u]
    even, odd = (u % 2 == 0) & (w % 2 == 0), (u % 2 == 1) & (w % 2 == 1)
    half = np.float32(np.sqrt(0.5))
    summed = np.where(even, x + y, np.where(odd, np.abs(x + y), np.abs(x) + np.abs(y))) * half
    apart = np.where(even | odd, np.abs(x - y), np.abs(np.abs(x) - np.abs(y))) * half
    d = np.arange(K)
    diagonal = np.where(d % 2 == 0, c[:, :, d, d], np.abs(c[:, :, d, d]))
    return np.concatenate([diagonal, summed, apart], axis=2).reshape(len(v), -1).astype(np.float32)


def projection(*sets: tuple[np.ndarray, np.ndarray], sample: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components) of the leading principal directions of the summaries (invariant()) of the
    given (vectors, rows), fitted on a fixed sample of each. A projection never lengthens a
    distance, so searching in it still finds every candidate."""
    rng = np.random.default_rng(0)
    picked = [v[np.sort(rng.choice(rows, min(len(rows), sample), replace=False))] for v, rows in sets]
    x = invariant(np.vstack(picked))
    mean = x.mean(axis=0)
    _, _, directions = np.linalg.svd(x - mean, full_matrices=False)
    return mean, directions[:SEARCH_DIMS]


def candidates(queries: np.ndarray, base: np.ndarray, radius: float, within: bool = False) -> np.ndarray:
    """(M, 2) rows (query, base) of every pair an HNSW graph (faiss) finds within `radius` (L2) of
    each other; a query whose k-th neighbour is still within it is asked again with 4k."""
    import faiss  # only here: the rest of the project never needs it

    index = faiss.IndexHNSWFlat(base.shape[1], HNSW_LINKS)
    index.hnsw.efConstruction = HNSW_BUILD_DEPTH
    index.add(base)
    found, todo, k = [], np.arange(len(queries)), NEIGHBOURS
    while len(todo):
        k = min(k, len(base))
        index.hnsw.efSearch = max(HNSW_SEARCH_DEPTH, k)
        distances, neighbours = index.search(queries[todo], k)
        near = (distances <= radius**2) & (neighbours >= 0)
        found.append(np.stack([np.repeat(todo, k)[near.ravel()], neighbours[near]], axis=1))
        todo = todo[near[:, -1]] if k < len(base) else todo[:0]
        k *= 4
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    if within:  # each unordered pair once, never an image with itself
        pairs = np.sort(pairs, axis=1)
        pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    return np.unique(pairs, axis=0).reshape(-1, 2)


def best_similarity(a: np.ndarray, b: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The exact score of each pair (rows of a and b): the best cosine over the 8 orientations."""
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), CHUNK):
        i, j = pairs[start : start + CHUNK, 0], pairs[start : start + CHUNK, 1]
        first, second = a[i], b[j]
        scores = [np.einsum("nd,nd->n", first, second[:, perm] * sign) for perm, sign in _orientations()]
        out[start : start + len(i)] = np.max(scores, axis=0)
    return out


def near_pairs(
    a: np.ndarray, b: np.ndarray | None = None, threshold: float = NEAR_DUPLICATE_SIMILARITY
) -> pd.DataFrame:
    """Pairs (i, j, similarity) with similarity >= threshold: within `a` (i < j) or between a and b.

    Near-linear: an approximate nearest-neighbour search over the orientation-free summary
    (`invariant`, projected on its leading directions) proposes candidates, and each candidate is
    scored exactly, so a pair's similarity and the threshold mean what they meant when every pair
    was compared; the search may miss a pair (0.2-0.25% of planted copies at 200,000 images,
    docs/performance.md), never adds one."""
    within = b is None
    mean = readable_mean(a) if within else readable_mean(a, b)
    # The same mean in all 8 orientations, so that centring keeps a flipped copy exactly as close.
    mean = np.mean([mean[perm] * sign for perm, sign in _orientations()], axis=0)
    a = centred(a, mean)
    b = a if within else centred(b, mean)
    pairs = candidate_pairs(a, None if within else b, threshold)
    similarity = best_similarity(a, b, pairs)
    keep = similarity >= threshold
    return pd.DataFrame(
        {
            "i": pairs[keep, 0].astype(int),
            "j": pairs[keep, 1].astype(int),
            "similarity": similarity[keep].astype(float),
        }
    )


def readable_mean(*sets: np.ndarray) -> np.ndarray:
    """The mean fingerprint of the readable rows (an unreadable file's row is NaN), a chunk at a time."""
    total, count = np.zeros(DIM), 0
    for v in sets:
        for start in range(0, len(v), CHUNK):
            block = v[start : start + CHUNK]
            block = block[np.isfinite(block[:, 0])]
            total += block.sum(axis=0, dtype=np.float64)
            count += len(block)
    return (total / max(count, 1)).astype(np.float32)


def projected(v: np.ndarray, rows: np.ndarray, centre: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The summaries (invariant()) of the given rows of v, projected, a chunk at a time: the
    full-size summaries are never held."""
    out = np.empty((len(rows), len(directions)), np.float32)
    for start in range(0, len(rows), CHUNK):
        out[start : start + CHUNK] = (invariant(v[rows[start : start + CHUNK]]) - centre) @ directions.T
    return out


def candidate_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float) -> np.ndarray:
    """(M, 2) rows (i of a, j of b, or of a when b is None) that may score `threshold` or more.
    Unreadable files (rows of zeros) take no part: they would all be each other's neighbours."""
    rows_a = np.flatnonzero(np.any(a != 0, axis=1))
    rows_b = rows_a if b is None else np.flatnonzero(np.any(b != 0, axis=1))
    if not len(rows_a) or not len(rows_b):
        return np.zeros((0, 2), np.int64)
    centre, directions = projection((a, rows_a)) if b is None else projection((a, rows_a), (b, rows_b))
    queries = projected(a, rows_a, centre, directions)
    base = queries if b is None else projected(b, rows_b, centre, directions)
    radius = np.sqrt(2 * (1 - threshold)) + 1e-3  # unit vectors: cosine >= t  <=>  distance <= sqrt(2 - 2t)
    if b is None:
        pairs = candidates(queries, base, radius, within=True)
    else:  # asked both ways, as within one set: a graph node that searches miss is still a query
        pairs = np.vstack([candidates(queries, base, radius), candidates(base, queries, radius)[:, ::-1]])
        pairs = np.unique(pairs, axis=0)
    return np.stack([rows_a[pairs[:, 0]], rows_b[pairs[:, 1]]], axis=1)


def stored_near_pairs(
    vectors: np.ndarray, store_dir: str | Path | None, threshold: float = NEAR_DUPLICATE_SIMILARITY
) -> pd.DataFrame:
    """near_pairs(vectors), kept in store_dir/near_pairs.npz under a digest of the fingerprints and
    the threshold: every fold of oof.py and a resumed run reuse them instead of pairing again, and
    always see the same pairs (the approximate search could differ by a rare pair from one run to
    the next). A stored file that does not match, or could not have come from this set, is replaced."""
    digest = hashlib.sha256(np.ascontiguousarray(vectors, np.float32).tobytes())
    digest.update(f"{threshold!r} {SEARCH_DIMS} {NEIGHBOURS} {HNSW_LINKS}".encode())
    path = Path(store_dir or "") / PAIRS_STORE
    if store_dir and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                i, j, similarity = z["i"], z["j"], z["similarity"]
                if str(z["key"]) == digest.hexdigest() and _pairs_fit(
                    i, j, similarity, len(vectors), threshold
                ):
                    return pd.DataFrame({"i": i.astype(int), "j": j.astype(int), "similarity": similarity})
        except UNREADABLE_NPZ:
            pass  # damaged or foreign: paired again below
    pairs = near_pairs(vectors, threshold=threshold)
    if store_dir:
        replace_atomically(path, lambda tmp: _write_pairs(tmp, digest.hexdigest(), pairs))
    return pairs


def _pairs_fit(i: np.ndarray, j: np.ndarray, similarity: np.ndarray, n: int, threshold: float) -> bool:
    shapes = i.ndim == j.ndim == similarity.ndim == 1 and len(i) == len(j) == len(similarity)
    kinds = i.dtype.kind in "iu" and j.dtype.kind in "iu" and similarity.dtype.kind == "f"
    return bool(shapes and kinds and ((0 <= i) & (i < j) & (j < n)).all() and (similarity >= threshold).all())


def _write_pairs(tmp, key: str, pairs: pd.DataFrame) -> None:
    with open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            i=pairs["i"].to_numpy(np.int64),
            j=pairs["j"].to_numpy(np.int64),
            similarity=pairs["similarity"].to_numpy(np.float64),
        )


def pair_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """duplicates.csv: both names, both labels, the similarity, and whether the labels disagree."""
    first, second = (
        table.iloc[pairs["i"]].reset_index(drop=True),
        table.iloc[pairs["j"]].reset_index(drop=True),
    )
    out = pd.DataFrame(
        {
            "image_1": first["image_name"],
            "image_2": second["image_name"],
            "similarity": pairs["similarity"].round(5).to_numpy(),
            "target_1": first["target"],
            "target_2": second["target"],
        }
    )
    out["labels_disagree"] = (
        (out["target_1"] >= 0) & (out["target_2"] >= 0) & (out["target_1"] != out["target_2"])
    )
    return out.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def contact_sheet(
    table: pd.DataFrame, result: pd.DataFrame, path: Path, top: int = 24, side: int = 160
) -> None:
    """The closest pairs side by side, each captioned with names, labels and similarity (disagreeing
    labels in red), for a person to confirm that they are the same photograph."""
    paths = dict(zip(table["image_name"], table["path"], strict=True))
    rows = []
    for r in result.head(top).itertuples():
        tiles = []
        for name in (r.image_1, r.image_2):
            try:
                tile = cv2.resize(
                    decode_image(paths[name], min_short_side=side), (side, side), interpolation=cv2.INTER_AREA
                )
            except ImageDecodeError:
                tile = np.zeros((side, side, 3), np.uint8)
            tiles.append(tile)
        caption = np.full((22, 2 * side, 3), 255, np.uint8)
        colour = (200, 0, 0) if r.labels_disagree else (0, 0, 0)
        text = f"{r.image_1} ({r.target_1}) ~ {r.image_2} ({r.target_2})  {r.similarity:.3f}"
        cv2.putText(caption, text, (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.36, colour, 1, cv2.LINE_AA)
        rows.append(np.vstack([np.hstack(tiles), caption]))
    if not rows:
        return
    columns = 3
    blank = np.full_like(rows[0], 255)
    rows += [blank] * (-len(rows) % columns)
    sheet = np.vstack([np.hstack(rows[k : k + columns]) for k in range(0, len(rows), columns)])
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(png.tobytes()))


def find_duplicates(metadata: str, images: str, out: Path, threshold: float, workers: int = 0) -> dict:
    data = load_labeled_images(metadata, images, skip_missing=True, require_labels=False)
    table = data.table
    vectors = fingerprints(table["path"], out, workers)
    pairs = stored_near_pairs(vectors, out, threshold)
    result = pair_table(table, pairs)
    groups = components(len(table), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    sizes = np.bincount(groups)
    atomic_write_text(out / "duplicates.csv", result.to_csv(index=False))
    contact_sheet(table, result, out / "closest_pairs.png")
    return {
        "images": len(table),
        "unreadable": int(np.isnan(vectors[:, 0]).sum()),
        "pairs": len(result),
        "groups": int((sizes > 1).sum()),
        "images_in_groups": int(sizes[sizes > 1].sum()),
        "labels_disagree": int(result["labels_disagree"].sum()),
        "result": result,
    }


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Find near-duplicate images (same photo, other name/size/orientation)."
    )
    ap.add_argument(
        "--metadata",
        default="data/metadata.csv",
        help="label CSV(s) in any supported format, comma-separated",
    )
    ap.add_argument("--images", default="data/isic", help="image folder(s), comma-separated")
    ap.add_argument(
        "--out", default="data/dedup", help="folder for duplicates.csv, closest_pairs.png and fingerprints"
    )
    ap.add_argument(
        "--threshold", type=float, default=NEAR_DUPLICATE_SIMILARITY, help="cosine similarity, 0..1"
    )
    ap.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    args = ap.parse_args(argv)
    if not 0 < args.threshold <= 1:
        print(f"error: --threshold must be in (0, 1], got {args.threshold}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = find_duplicates(args.metadata, args.images, out, args.threshold, args.workers)
    print(
        f"{found['images']:,} images ({found['unreadable']} unreadable): "
        f"{found['pairs']:,} near-duplicate pairs in {found['groups']:,} groups "
        f"of {found['images_in_groups']:,} images; "
        f"{found['labels_disagree']} pairs with disagreeing labels"
    )
    for r in found["result"].head(10).itertuples():
        flag = "  LABELS DISAGREE" if r.labels_disagree else ""
        print(f"  {r.image_1} ~ {r.image_2}  similarity {r.similarity:.4f}{flag}")
    print(f"written: {out / 'duplicates.csv'}, {out / 'closest_pairs.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
