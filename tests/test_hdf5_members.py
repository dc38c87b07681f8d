"""A crafted HDF5 image file: members that would read other files (external and soft links, external
raw storage, a virtual dataset), members that are not bytes, fill values and declared sizes beyond what
an image needs, odd keys, a truncated file. Every command reports each one with its reason and reads
nothing outside the file."""

import json
import struct

import h5py
import numpy as np
import pandas as pd
import pytest

from src.data.images import MAX_FILE_BYTES, ImageDecodeError, decode_image, index_images, read_image_bytes

from helpers import gradient_image, run_process, run_script, write_jpeg

# Each refused member with the reason it is given.
REFUSED = {
    "ISIC_external_link": "an external link",
    "ISIC_soft_link": "a soft link",
    "ISIC_external_storage": "stored in other files",
    "ISIC_virtual": "stored in other files",
    "ISIC_null": "not the bytes of an image",
    "ISIC_reference": "not the bytes of an image",
    "ISIC_two_d": "not the bytes of an image",
    "ISIC_group": "a group",
    "ISIC_fill_value": "no bytes stored",
    "ISIC_declared_huge": "above the limit",
}
READABLE = ["ISIC_vlen", "ISIC_fixed", "ISIC_array", "ISIC_a::b", "ISIC_spaced"]  # the last as " ISIC_spaced"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """(folder, crafted.hdf5, metadata.csv listing every member): outside.jpg and outside.h5 sit
    beside it and hold a valid JPEG, which a member that read them would decode."""
    folder = tmp_path_factory.mktemp("hdf5")
    jpeg = write_jpeg(folder / "outside.jpg", gradient_image(64, 64)).read_bytes()
    with h5py.File(folder / "outside.h5", "w") as other:
        other["ISIC_inside_other"] = np.frombuffer(jpeg, np.uint8)
    path = folder / "crafted.hdf5"
    with h5py.File(path, "w") as f:
        vlen = f.create_dataset("ISIC_vlen", shape=(), dtype=h5py.vlen_dtype(np.uint8))
        vlen[()] = np.frombuffer(jpeg, np.uint8)  # a variable-length scalar
        f["ISIC_fixed"] = np.bytes_(jpeg)  # the ISIC 2024 layout: a fixed-length scalar
        f["ISIC_array"] = np.frombuffer(jpeg, np.uint8)
        f["ISIC_a::b"] = np.bytes_(jpeg)
        f[" ISIC_spaced"] = np.bytes_(jpeg)
        f["ISIC_external_link"] = h5py.ExternalLink(str(folder / "outside.h5"), "ISIC_inside_other")
        f["ISIC_soft_link"] = h5py.SoftLink("/ISIC_vlen")
        f.create_dataset(
            "ISIC_external_storage",
            shape=(len(jpeg),),
            dtype=np.uint8,
            external=[(str(folder / "outside.jpg"), 0, len(jpeg))],
        )
        layout = h5py.VirtualLayout(shape=(len(jpeg),), dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(folder / "outside.h5"), "ISIC_inside_other", shape=(len(jpeg),))
        f.create_virtual_dataset("ISIC_virtual", layout)
        f["ISIC_null"] = h5py.Empty("S10")
        f.create_dataset("ISIC_reference", data=f["ISIC_vlen"].ref, dtype=h5py.ref_dtype)
        f["ISIC_two_d"] = np.zeros((8, 8), np.uint8)
        f.create_group("ISIC_group")
        f.create_dataset("ISIC_fill_value", shape=(), dtype="S200000000")  # 200 MB of fill, nothing written
        f.create_dataset("ISIC_declared_huge", shape=(), dtype=h5py.vlen_dtype(np.uint8))
        f["ISIC_declared_huge"][()] = np.frombuffer(jpeg, np.uint8)
        offset = f["ISIC_declared_huge"].id.get_offset()
    with open(path, "r+b") as raw:  # its on-disk length now claims 4 GB
        raw.seek(offset)
        raw.write(struct.pack("<I", 0xFFFFFFF0))
    names = sorted([*REFUSED, *READABLE])
    table = pd.DataFrame({"image_name": names, "patient_id": [f"IP_{i}" for i in range(len(names))]})
    table["target"] = [i % 2 for i in range(len(names))]
    table.to_csv(folder / "metadata.csv", index=False)
    return folder, path, folder / "metadata.csv"


OUTSIDE = ["ISIC_external_link", "ISIC_soft_link", "ISIC_external_storage", "ISIC_virtual"]


def member(path, name):
    return f"{path}::{name}"


def test_no_member_reads_another_file(crafted):
    _, path, _ = crafted
    for name in OUTSIDE:  # each of these used to decode outside.jpg or outside.h5
        with pytest.raises(ImageDecodeError, match=REFUSED[name]):
            read_image_bytes(member(path, name))


def test_members_that_are_not_image_bytes_are_refused_with_the_reason(crafted):
    _, path, _ = crafted
    for name in set(REFUSED) - set(OUTSIDE):  # a null dataspace used to raise TypeError
        with pytest.raises(ImageDecodeError, match=REFUSED[name]):
            read_image_bytes(member(path, name))
    assert MAX_FILE_BYTES < 200_000_000  # a fill value that size is refused by its size too


def test_the_index_reads_no_member_and_odd_keys_are_found(crafted):
    _, path, _ = crafted
    index = index_images(path)
    assert set(index) == {*REFUSED, *READABLE}
    assert index["ISIC_spaced"] == member(path, " ISIC_spaced")  # ids are stripped, as metadata ids are
    reference = decode_image(index["ISIC_vlen"])
    for name in READABLE:
        assert np.array_equal(decode_image(index[name]), reference), name


@pytest.mark.slow
def test_commands_report_the_members_and_read_nothing_outside(crafted, tmp_path):
    folder, path, metadata = crafted
    r = run_script("src/data/check.py", f"--metadata={metadata}", f"--images={path}", "--decode")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"unreadable files: {len(REFUSED)}" in r.stdout
    for name, reason in REFUSED.items():
        assert any(name in line and reason in line for line in r.stdout.splitlines()), (name, r.stdout)
    r = run_script("src/data/prepare.py", f"--images={path}", f"--out={tmp_path / 'cache'}", "--size=32")
    assert r.returncode == 0 and f"{len(READABLE)} written" in r.stdout, r.stdout + r.stderr
    cached = {p.stem for p in (tmp_path / "cache").glob("*.jpg")}
    assert cached == {"ISIC_vlen", "ISIC_fixed", "ISIC_array", "ISIC_a::b", "ISIC_spaced"}
    r = run_script(
        "src/data/dedup.py", f"--metadata={metadata}", f"--images={path}", f"--out={tmp_path / 'dups'}"
    )
    assert "Traceback" not in r.stderr, r.stderr


def test_predict_lists_each_refused_member(crafted, trained_run, tmp_path):
    _, path, _ = crafted
    r = run_script(
        "src/inference/predict.py",
        "--checkpoint",
        trained_run[1],
        path,
        "--out",
        tmp_path / "p.csv",
        "--workers",
        0,
    )
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("image_name")
    for name, reason in REFUSED.items():
        assert reason in p.loc[name, "error"], (name, p.loc[name, "error"])
    assert (p.loc[READABLE, "error"] == "").all()


def test_a_truncated_file_is_one_error_line_in_every_command(crafted, trained_run, tmp_path, capsys):
    """Each command's main(), in this process: an exception escaping it is the traceback it was."""
    from src.data import check, dedup, prepare
    from src.inference import predict

    _, path, metadata = crafted
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(path.read_bytes()[:1500])
    for command, args in (
        (check, [f"--metadata={metadata}", f"--images={cut}"]),
        (prepare, [f"--images={cut}", f"--out={tmp_path / 'cache'}"]),
        (dedup, [f"--metadata={metadata}", f"--images={cut}", f"--out={tmp_path / 'd'}"]),
        (predict, ["--checkpoint", str(trained_run[1]), str(cut), "--out", str(tmp_path / "p.csv")]),
    ):
        assert command.main(args) == 1, command.__name__
        assert capsys.readouterr().err.startswith(f"error: cannot read {cut} as HDF5"), command.__name__


def test_damaged_files_are_refused_never_crash_or_hang(crafted, tmp_path):
    """150 copies of the crafted file with random bytes overwritten, each read in its own child
    process (a damaged name table once escaped as a RuntimeError traceback)."""
    r = run_process("tests/hdf5_fuzz.py", crafted[1], tmp_path, 150, 0)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    outcomes = [row["outcome"] for row in rows]
    assert len(rows) == 150 and set(outcomes) <= {"read", "refused"}, [
        row for row in rows if row["outcome"] not in ("read", "refused")
    ][:5]  # never an exception that escaped, a crash or a hang
    assert outcomes.count("refused") > 5 and outcomes.count("read") > 5


def test_reading_members_gives_the_heaps_free_memory_back_regularly(tmp_path, monkeypatch):
    """A worker reading member after member grew by about 60 KB per image without it (the measured
    growth and its cause: src/data/images.py trim_heap, benchmarks/worker_memory.py)."""
    import src.data.images as images

    jpeg = write_jpeg(tmp_path / "a.jpg", gradient_image(40, 40)).read_bytes()
    with h5py.File(tmp_path / "many.hdf5", "w") as f:
        for i in range(2 * images.TRIM_EVERY):
            f[f"ISIC_{i}"] = np.bytes_(jpeg)
    trims = []
    monkeypatch.setattr(images, "trim_heap", lambda: trims.append(1))
    monkeypatch.setattr(images, "_member_reads", 0)
    for path in index_images(tmp_path / "many.hdf5").values():
        assert read_image_bytes(path) == jpeg
    assert len(trims) == 2
    monkeypatch.undo()
    images.trim_heap()  # the real one runs (glibc) or does nothing (elsewhere), and never raises
