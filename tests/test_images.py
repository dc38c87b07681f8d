"""Decoding: reduced JPEG decoding, odd image kinds, and the exact reason a bad file is refused."""

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data.images import (
    ImageDecodeError,
    decode_bytes,
    decode_image,
    index_images,
    jpeg_size,
    naive_decode,
    reduction_for,
    resize_short_side,
)

from helpers import SHARED, gradient_image, needs_shared, write_jpeg


def test_index_finds_images_directly_and_one_level_down(tmp_path):
    write_jpeg(tmp_path / "ISIC_1.jpg", gradient_image())
    write_jpeg(tmp_path / "jpeg" / "ISIC_2.JPEG", gradient_image())  # Kaggle's jpeg/train/ layout
    cv2.imwrite(str(tmp_path / "ISIC_3.png"), gradient_image())
    (tmp_path / "notes.txt").write_text("x")
    write_jpeg(tmp_path / "a" / "b" / "ISIC_4.jpg", gradient_image())  # two levels down: not searched
    assert sorted(index_images(tmp_path)) == ["ISIC_1", "ISIC_2", "ISIC_3"]


def test_reduction_keeps_short_side_at_least_target():
    assert reduction_for(4000, 256) == 8  # 500 >= 256
    assert reduction_for(2592, 256) == 8  # 324
    assert reduction_for(1500, 256) == 4  # 375
    assert reduction_for(600, 256) == 2
    assert reduction_for(400, 256) == 1


def test_reduced_decode_matches_naive_decode(tmp_path):
    big = cv2.resize(gradient_image(60, 90), (1800, 1200), interpolation=cv2.INTER_LINEAR)
    path = write_jpeg(tmp_path / "big.jpg", big)
    assert jpeg_size(path.read_bytes()) == (1800, 1200)
    fast, slow = decode_image(path, 128), naive_decode(path, 128)
    assert fast.shape == slow.shape == (128, 192, 3)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0


def test_resize_averages_below_half_size_and_stays_close_to_area_above():
    # Pixel noise shrunk 4x: averaging all 16 source pixels cuts its std by 4; bilinear, which
    # reads only 4 of them, would cut it by 2 (the aliasing that area averaging is there to stop).
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3)).astype(np.uint8)
    small = resize_short_side(noise, 100)
    assert small.shape == (100, 100, 3) and small.std() < 0.3 * noise.std()
    smooth = cv2.resize(gradient_image(60, 90), (341, 256), interpolation=cv2.INTER_CUBIC)
    fast = resize_short_side(smooth, 224)
    area = cv2.resize(smooth, fast.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert fast.shape == (224, 298, 3) and np.abs(fast.astype(int) - area.astype(int)).mean() < 1.0


@needs_shared
def test_real_fullres_original_decodes_to_short_side():
    path = SHARED / "images" / "isic_archive_fullres" / "ISIC_0000001.jpg"
    w, h = jpeg_size(path.read_bytes())
    image = decode_image(path, 256)
    assert min(image.shape[:2]) == 256 and image.shape[1] == round(w * 256 / min(w, h))


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"a\.jpg: empty file \(0 bytes\)"):
        decode_image(tmp_path / "a.jpg")


def test_truncated_jpeg(tmp_path):
    data = write_jpeg(tmp_path / "a.jpg", gradient_image(200, 300)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG \(no end-of-image marker\)"):
        decode_image(tmp_path / "cut.jpg", 64)


def test_not_an_image(tmp_path):
    (tmp_path / "a.jpg").write_text("<html>404 Not Found</html>")
    with pytest.raises(ImageDecodeError, match=r"not a readable image \(JPEG or PNG expected\)"):
        decode_image(tmp_path / "a.jpg")


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image(tmp_path / "nope.jpg")


def _pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


RED = (200, 30, 40)


@pytest.mark.parametrize(
    "mode,fmt", [("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGB", "PNG")]
)
def test_odd_image_kinds_become_8bit_rgb(mode, fmt):
    rgb = Image.new("RGB", (40, 30), RED)
    if mode == "I;16":
        image = Image.fromarray(np.full((30, 40), 40000, np.uint16))
    else:
        image = rgb.convert(mode)
    out = decode_bytes(_pil_bytes(image, fmt), name="x")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    if mode in ("RGBA", "CMYK", "RGB"):
        assert np.abs(out[15, 20].astype(int) - RED).max() < 12  # colours kept, channel order right
    if mode == "I;16":
        assert abs(int(out[15, 20, 0]) - 40000 // 257) <= 1  # 16-bit scaled down, not wrapped


def test_exif_rotation_is_applied():
    image = Image.fromarray(gradient_image(30, 60))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_bytes(_pil_bytes(image, "JPEG", exif=exif), min_short_side=None)
    assert out.shape == (60, 30, 3)
    out = decode_bytes(_pil_bytes(image, "JPEG", exif=exif), min_short_side=15)
    assert out.shape == (30, 15, 3)


# ---- hostile files: every limit is checked from the header, before any pixel is decoded ----


def padded_jpeg(width=20000, height=20000) -> bytes:
    """A real small JPEG whose frame header comes after a 65,535-byte APP1 segment and declares
    width x height: a decompression bomb that a check of only the first 64 KiB would miss."""
    data = bytearray(cv2.imencode(".jpg", gradient_image(16, 16))[1].tobytes())
    sof = next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    app1 = b"\xff\xe1" + (65535).to_bytes(2, "big") + bytes(65533)
    return bytes(data[:2]) + app1 + bytes(data[2:])


def test_frame_header_after_a_64k_segment_is_still_found_and_refused():
    from src.data.images import ImageTooLarge, image_size

    data = padded_jpeg()
    assert image_size(data) == (20000, 20000)
    with pytest.raises(ImageTooLarge, match="image is 20000x20000 pixels, above the limit of 50,000,000"):
        decode_bytes(data, 224)


def test_formats_whose_size_is_not_checked_are_refused(tmp_path):
    # OpenCV would decode a WebP or BMP named .jpg; only JPEG and PNG, whose headers are checked, get through.
    webp = cv2.imencode(".webp", gradient_image(64, 64))[1].tobytes()
    bmp = b"BM" + bytes(16) + (2_000_000).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(28)
    for data in (webp, bmp):
        (tmp_path / "x.jpg").write_bytes(data)
        with pytest.raises(ImageDecodeError, match=r"not a readable image \(JPEG or PNG expected\)"):
            decode_image(tmp_path / "x.jpg", 64)


def test_absurd_aspect_ratio_is_refused_before_resizing():
    # A 3,000x1 PNG is 100 bytes; scaling its short side to 64 px would make a 192,000x64 image.
    line = cv2.imencode(".png", np.zeros((1, 3000, 3), np.uint8))[1].tobytes()
    assert len(line) < 200
    with pytest.raises(ImageDecodeError, match=r"3000x1 pixels, an aspect ratio above 10:1"):
        decode_bytes(line, 64)
    assert decode_bytes(cv2.imencode(".png", gradient_image(20, 190))[1].tobytes(), 32).shape == (32, 304, 3)


def test_symlink_loops_in_an_image_folder_are_skipped_or_reported(tmp_path):
    import os

    write_jpeg(tmp_path / "ISIC_1.jpg", gradient_image())
    os.symlink("loop", tmp_path / "loop")  # a folder-like entry that loops
    os.symlink("ISIC_2.jpg", tmp_path / "ISIC_2.jpg")  # an image-like entry that loops
    found = index_images(tmp_path)
    assert sorted(found) == ["ISIC_1", "ISIC_2"]
    with pytest.raises(ImageDecodeError, match="cannot read .*Too many levels of symbolic links"):
        decode_image(found["ISIC_2"], 32)


def _resize_in_worker(i: int) -> tuple:
    return cv2.resize(np.full((600, 900, 3), i, np.uint8), (90, 60), interpolation=cv2.INTER_AREA).shape


def test_a_decoding_pool_works_after_opencv_threads_ran_in_this_process():
    # A large resize starts OpenCV's thread pool; a plain forked Pool then deadlocked in its
    # workers (prepare_cache hung inside the test suite).
    from src.data.images import decoding_pool

    cv2.resize(np.zeros((4000, 6000, 3), np.uint8), (600, 400), interpolation=cv2.INTER_AREA)
    pool = decoding_pool(2)
    try:
        shapes = pool.map_async(_resize_in_worker, range(4)).get(timeout=60)
    finally:
        pool.terminate()
    assert shapes == [(60, 90, 3)] * 4
