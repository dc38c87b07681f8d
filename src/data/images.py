"""Find image files and decode them fast.

ISIC 2020 originals are mostly 6000x4000 JPEGs. Decoding all those pixels only to throw 99% of them
away in a resize is the slowest step of training, so JPEGs are decoded in the DCT domain at 1/2, 1/4
or 1/8 scale (OpenCV's IMREAD_REDUCED_COLOR_*), picking the largest reduction that still leaves the
short side at least as large as needed, and then resized to the exact size.

Images can also live inside an HDF5 file (the ISIC 2024 layout: one scalar dataset of JPEG bytes per
image, keyed by isic_id). Such an image's path is "<file.hdf5>::<isic_id>"; every reader here accepts it.
Only a dataset stored in that very file is read (no link, external storage or virtual dataset, which
would read other files), and only one holding a bytes scalar or a 1-D uint8 array of a size an
image can have; anything else is an unreadable member with the reason.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from src.errors import ProjectError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
REDUCED_FLAGS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)
# JPEG start-of-frame markers carry the image size (baseline, extended, progressive, lossless...).
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Checked from the header before any pixel is decoded, wherever a file is decoded (training,
# evaluation, prediction, the service). ISIC originals are at most 24 MP and about 3:2.
MAX_PIXELS = int(os.environ.get("MAX_PIXELS", "50000000"))
MAX_ASPECT_RATIO = 10.0  # a 10,000x1 PNG of 109 bytes would otherwise become 2.2 GB at 224 px
# Read into memory whole. Real originals are under 30 MB; no JPEG or PNG of MAX_PIXELS needs more than
# 3 bytes a pixel, which also bounds what an HDF5 member may declare (a fill value of any size).
MAX_FILE_BYTES = min(256 * 1024 * 1024, 3 * MAX_PIXELS + 1024 * 1024)


HDF5_EXTENSIONS = (".hdf5", ".h5")
MEMBER_SEP = "::"  # "train-image.hdf5::ISIC_0015657" is one image inside an HDF5 file
# The file part ends at the first ".hdf5::" (or ".h5::"): a key may itself contain "::".
_MEMBER = re.compile(r"(.*?\.(?:hdf5|h5))::(.*)", re.IGNORECASE | re.DOTALL)
_open_hdf5: dict = {}  # file -> open h5py.File of this process (closed before any fork)
TRIM_EVERY = 128  # HDF5 member reads between two returns of the heap's free memory (trim_heap)
_member_reads = 0


class DataError(ProjectError):
    """Any data problem worth a one-paragraph message and exit code 1 (an image source that cannot
    be listed, bad labels...); every command catches it."""


class ImageDecodeError(ProjectError):
    """A file that is not a usable image; the message says why."""


class ImageTooLarge(ImageDecodeError):
    """An image above MAX_PIXELS (a decompression bomb, or simply too big to decode safely)."""


def index_images(folder: str | Path) -> dict[str, str]:
    """Map image id -> path for images directly in `folder` or one level down (Kaggle's jpeg/train/).

    One directory scan instead of a stat per image: on 33k files over a network disk that is seconds
    instead of minutes. Where an id exists twice, the file directly in `folder` wins.
    """
    folder = Path(folder)
    found: dict[str, str] = {}
    if folder.suffix.lower() in HDF5_EXTENSIONS and folder.is_file():
        return index_hdf5(folder)
    if not folder.is_dir():
        return found
    subdirs = []
    for entry in _entries(folder):
        if _is_dir(entry):
            subdirs.append(entry.path)
        else:
            _add_image(found, entry)
    for sub in subdirs:
        for entry in _entries(sub):
            if not _is_dir(entry):
                _add_image(found, entry, overwrite=False)
    return found


def index_hdf5(file: str | Path) -> dict[str, str]:
    """id -> "<file>::<key>" for every name at the top of an ISIC 2024 style HDF5 file, read from the
    link table alone: no member is opened and no link is followed (an external link would open
    another file). What a name holds is checked when it is read. An id is the key without
    surrounding spaces, as metadata ids are. The file is closed again: DataLoader workers open
    their own handle (an HDF5 handle must not cross a fork)."""
    import h5py  # only needed for the ISIC 2024 layout

    names: list[bytes] = []
    try:
        with h5py.File(file, "r") as f:
            f.id.links.iterate(names.append)
    except (OSError, ValueError, RuntimeError) as e:  # not HDF5, truncated, a damaged name table
        raise DataError(f"cannot read {file} as HDF5: {str(e).splitlines()[0]}") from None
    found: dict[str, str] = {}
    for raw in names:
        key = raw.decode("utf-8", "replace")
        if key.strip() and key.strip() not in found:
            found[key.strip()] = f"{file}{MEMBER_SEP}{key}"
    return found


def hdf5_member(path: str | Path) -> tuple[str, str] | None:
    """(file, key) when `path` names an image inside an HDF5 file, else None."""
    match = _MEMBER.fullmatch(str(path))
    return (match.group(1), match.group(2)) if match else None


def _hdf5_file(file: str):
    """This process's handle on `file`, opened on first use; close_hdf5_files runs before any fork,
    so a worker always opens its own."""
    import h5py

    if file not in _open_hdf5:
        _open_hdf5[file] = h5py.File(file, "r")
    return _open_hdf5[file]


def close_hdf5_files() -> None:
    """Close every HDF5 file this process opened; they reopen on next use. Runs before every fork:
    the HDF5 library's state of an open file must not be inherited by a child (a DataLoader worker,
    a Pool process), where it can deadlock."""
    for f in _open_hdf5.values():
        try:
            f.close()
        except Exception:  # already closed, or the library is shutting down
            pass
    _open_hdf5.clear()


os.register_at_fork(before=close_hdf5_files)


def decoding_pool(workers: int = 0):
    """A process pool for decoding many files, one OpenCV thread per process. A child forked while
    OpenCV's thread pool runs (after any large resize in this process) inherits a pool whose threads
    do not exist and deadlocks on its first OpenCV call: so the threads are stopped while the pool
    forks its processes, and restored after."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return multiprocessing.get_context("fork").Pool(
            workers or os.cpu_count() or 1, initializer=cv2.setNumThreads, initargs=(1,)
        )
    finally:
        cv2.setNumThreads(threads)


def read_image_bytes(path: str | Path) -> bytes:
    """The encoded bytes of an image file or of an image inside an HDF5 file."""
    member = hdf5_member(path)
    try:
        if member:
            return _read_member(_image_dataset(*member, name=str(path)), member[0], str(path))
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ImageTooLarge(f"{path}: file is {size:,} bytes, above the limit of {MAX_FILE_BYTES:,}")
            return f.read()
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # missing, unreadable, a folder, a
        # symlink loop, no such key, a NUL in the name, an HDF5 structure h5py cannot read...
        raise ImageDecodeError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def file_stamp(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns) that changes when the image changes; for an image inside an HDF5 file, the
    file's: one stat instead of opening each of 401,059 members (about 150 us each), and any write
    to the file makes every member's stored fingerprint or cached copy stale. Raises OSError when
    it cannot be read."""
    member = hdf5_member(path)
    st = os.stat(member[0] if member else path)
    return st.st_size, st.st_mtime_ns


def _image_dataset(file: str, key: str, name: str):
    """The member `key` of `file` if it can hold an image stored in this very file: a hard-linked
    dataset, without external storage, not virtual, of a bytes scalar or a 1-D uint8 array, and
    with bytes actually stored. Otherwise ImageDecodeError says what it is instead."""
    import h5py

    f = _hdf5_file(file)
    link = f.get(key, getlink=True)
    if link is None:
        raise KeyError(f"no member {key!r}")
    if not isinstance(link, h5py.HardLink):
        kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
        raise ImageDecodeError(f"{name}: {kind}, not an image stored in this file")
    dataset = f[key]
    if not isinstance(dataset, h5py.Dataset):
        raise ImageDecodeError(f"{name}: a group, not an image")
    storage = dataset.id.get_create_plist()
    if storage.get_layout() == h5py.h5d.VIRTUAL or storage.get_external_count():
        raise ImageDecodeError(f"{name}: its bytes are stored in other files (virtual or external storage)")
    bytes_scalar = dataset.shape == () and (
        (dataset.dtype.kind in "SV" and dataset.dtype.names is None and dataset.dtype.subdtype is None)
        or h5py.check_vlen_dtype(dataset.dtype) in (bytes, str, np.dtype(np.uint8))
    )
    if not (bytes_scalar or (dataset.ndim == 1 and dataset.dtype == np.uint8)):
        shape = "no dataspace" if dataset.shape is None else f"shape {dataset.shape}"
        raise ImageDecodeError(f"{name}: holds {dataset.dtype} ({shape}), not the bytes of an image")
    if dataset.id.get_storage_size() == 0:
        raise ImageDecodeError(f"{name}: no bytes stored (only a fill value)")
    return dataset


def _read_member(dataset, file: str, name: str) -> bytes:
    """The dataset's bytes, refused before reading when they are more than an image can need."""
    import h5py

    size = dataset.nbytes
    if h5py.check_vlen_dtype(dataset.dtype) is not None:  # the length is the first 4 bytes on disk
        offset = dataset.id.get_offset()
        if offset is None:
            raise ImageDecodeError(f"{name}: variable-length bytes not stored contiguously")
        with open(file, "rb") as f:
            head = os.pread(f.fileno(), 4, offset)
        size = struct.unpack("<I", head)[0] if len(head) == 4 else MAX_FILE_BYTES + 1
    if size > MAX_FILE_BYTES:
        raise ImageTooLarge(f"{name}: {size:,} bytes, above the limit {MAX_FILE_BYTES:,}")
    value = dataset[()]
    global _member_reads
    _member_reads += 1
    if _member_reads % TRIM_EVERY == 0:
        trim_heap()
    return value.tobytes() if isinstance(value, np.ndarray) else bytes(value)


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

    A process that reads image after image from an HDF5 file kept growing without it: glibc hands
    out blocks above its mmap threshold (128 KB, raised to the largest block freed so far, here the
    4.8 MB of a 224 px batch) from the heap, where the decoded images (150-800 KB) and the small
    blocks h5py allocates for each member read interleave, so that the heap fragments and never
    shrinks. Measured on 10,000 ISIC-2024-sized crops, 2 DataLoader workers at 224 px: 324 MB per
    worker against 30 MB for the same images as files; trimmed every 128 reads, 59 MB, the same at
    20,000 images, at the same CPU per image (benchmarks/worker_memory.py, docs/performance.md)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _entries(folder) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # an unreadable or looping sub-folder is skipped, not fatal
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop: neither a folder nor an image; decoding reports it if listed
        return False


def _add_image(found: dict, entry: os.DirEntry, overwrite: bool = True) -> None:
    stem, ext = os.path.splitext(entry.name)
    if ext.lower() in IMAGE_EXTENSIONS and not stem.startswith(".") and (overwrite or stem not in found):
        found[stem] = entry.path


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the JPEG header without decoding pixels; None if not a JPEG.

    Walks the whole segment chain (by segment lengths, so it costs microseconds however large the
    APP segments before the frame header are) and stops at the first start-of-scan: the frame
    header must come before it, and that is the size the decoder will allocate for.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            pos += 1  # padding or a stray byte between segments
            continue
        marker = data[pos + 1]
        if marker in SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker in (0xDA, 0xD9):  # scan data or end of image before any frame header
            return None
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 2 if marker != 0xFF else 1
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG from its header alone; None for anything else."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return jpeg_size(data)


def check_header(data: bytes, name: str = "image", max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image that is safe to decode; ImageDecodeError (ImageTooLarge for a
    pixel bomb) otherwise. Only JPEG and PNG reach the decoder: they are the formats whose real
    dimensions are checked here, so a WebP, TIFF or BMP renamed .jpg cannot slip past the limits."""
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    size = image_size(data)
    if size is None:
        raise ImageDecodeError(f"{name}: not a readable image (JPEG or PNG expected)")
    width, height = size
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{name}: not a readable image (its header says {width}x{height} pixels)")
    if width * height > limit:
        raise ImageTooLarge(f"{name}: image is {width}x{height} pixels, above the limit of {limit:,}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(
            f"{name}: image is {width}x{height} pixels, an aspect ratio above "
            f"{MAX_ASPECT_RATIO:g}:1 (resizing its short side would take far more memory "
            f"than the image is worth)"
        )
    return width, height


def jpeg_is_truncated(data: bytes) -> bool:
    """True if the last scan never reaches the end-of-image marker (a cut-off download).

    0xFF bytes inside entropy-coded data are always stuffed, so FFD9 after the last SOS is the real
    end marker; an EXIF thumbnail's own markers come before the main image and are not confused with it.
    """
    if b"\xff\xd9" in data[-32:]:  # the common case, decided without scanning megabytes
        return False
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def reduction_for(short_side: int, min_short_side: int) -> int:
    """The largest DCT reduction (8, 4, 2 or 1) keeping the short side >= min_short_side."""
    for factor, _ in REDUCED_FLAGS:
        if short_side // factor >= min_short_side:
            return factor
    return 1


def decode_image(path: str | Path, min_short_side: int | None = None) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), EXIF orientation applied.

    With `min_short_side`, the result is resized so that its short side equals it (a smaller
    image is upscaled), using reduced JPEG decoding when possible. Grayscale, RGBA, CMYK and 16-bit
    files come out as 8-bit RGB. Raises ImageDecodeError with the reason on a bad file.
    """
    return decode_bytes(read_image_bytes(path), min_short_side, name=str(path))


def decode_bytes(data: bytes, min_short_side: int | None = None, name: str = "image") -> np.ndarray:
    """decode_image for bytes already in memory (uploads, tests)."""
    width, height = check_header(data, name)
    flag = cv2.IMREAD_COLOR
    if data[:2] == b"\xff\xd8":
        if jpeg_is_truncated(data):
            raise ImageDecodeError(f"{name}: truncated JPEG (no end-of-image marker)")
        if min_short_side:
            flag = dict(REDUCED_FLAGS).get(
                reduction_for(min(width, height), min_short_side), cv2.IMREAD_COLOR
            )
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
        if image is None or image.size == 0:
            raise ImageDecodeError(f"{name}: not a readable image (JPEG or PNG expected)")
        if min_short_side:
            image = resize_short_side(image, min_short_side)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # after the resize: fewer pixels to convert
    except cv2.error as e:  # OpenCV's own limits and corrupt data it detects late
        reason = (e.err or str(e)).strip().splitlines()[0]
        raise ImageDecodeError(f"{name}: not a readable image (the decoder refused it: {reason})") from None


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so that min(H, W) == short_side (area averaging below half size, else bilinear)."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    if scale >= 1.0:
        return image if scale == 1.0 else _upscale(image, scale)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    # Below half size only area averaging uses every source pixel (bilinear would skip some and
    # alias). From half size up bilinear reads them all, gives the same picture and is several
    # times faster (measured: docs/performance.md).
    interpolation = cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA
    return cv2.resize(image, size, interpolation=interpolation)


def _upscale(image: np.ndarray, scale: float) -> np.ndarray:
    # Small inputs (HAM10000 is 224 px) still have to reach the model's size.
    h, w = image.shape[:2]
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)


def naive_decode(path: str | Path, short_side: int) -> np.ndarray:
    """Full-resolution decode + area resize: the baseline the benchmarks compare against."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
