"""Damage an HDF5 file at random bytes and read each damaged copy in a child of its own.

    python tests/hdf5_fuzz.py FILE.hdf5 WORK_FOLDER COPIES SEED

Run by tests/test_hdf5_members.py in a fresh interpreter that imports little more than the image
reader, so that each child forks in milliseconds. Prints one JSON line per copy: {"changed": bytes
overwritten, "outcome": read | refused | exception | crash | hang, "reason"}: "read" when every
member was read or refused with a reason, "refused" when the file itself was.
"""

import json
import random
import sys
from pathlib import Path

from src.data.images import DataError, ImageDecodeError, index_images, read_image_bytes

from children import in_child


def read_everything(path: str) -> dict:
    try:
        members = index_images(path).values()
    except DataError as e:
        return {"outcome": "refused", "reason": str(e)}
    for name in members:
        try:
            read_image_bytes(name)
        except ImageDecodeError:
            pass
    return {"outcome": "read"}


def main(path: str, work: str, copies: int, seed: int) -> None:
    data, rng = Path(path).read_bytes(), random.Random(seed)
    damaged_path = Path(work) / "damaged.hdf5"
    for _ in range(copies):
        damaged, changed = bytearray(data), rng.choice([1, 4, 16])
        for _ in range(changed):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        damaged_path.write_bytes(damaged)
        result = in_child(read_everything, str(damaged_path))
        print(json.dumps({"changed": changed, "outcome": result["outcome"], "reason": result.get("reason")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
