"""One training run's folder (CHECKPOINT_DIR), in the spirit of timm's CheckpointSaver.

`RunDir` owns everything train.py writes and reads back: the resume/overwrite policy, a lock so
that two runs never write one folder, the split (reused when resuming), the best and last
checkpoints, training_history.json and training_curves.png. Every file is written to a temporary
name and renamed into place, so a crash or a full disk leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import threading
from pathlib import Path

import pandas as pd
import torch

from src.core.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint, versions
from src.data.atomic import atomic_write_json, atomic_write_text, remove_stale_temporaries
from src.data.splits import SplitError, read_split, split_digest, write_split
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from src.errors import ProjectError
from src.training.report import plot_training_curves

SPLIT_FILE = "split.csv"
BEST_FILE = "best.pth"  # a stable name for the best epoch's checkpoint, for every later command


# summary.csv: one row per epoch beside training_history.json, for a spreadsheet or `tail -f`
SUMMARY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "val_pauc", "val_sensitivity"]
SUMMARY_COLUMNS += ["val_specificity", "lr", "seconds", "train_images_per_s", "skipped_files"]


class RunExists(ProjectError):
    pass


class RunDir:
    def __init__(self, path: str | Path, config, rank: int = 0, world_size: int = 1):
        """Check the folder's policy, then (rank 0) lock it for this process's lifetime."""
        self.path, self.c, self.rank, self.world_size = Path(path), config, rank, world_size
        self._check_policy()  # before the lock, so that a refused run leaves the folder untouched
        self._lock = self._take_lock() if rank == 0 else None
        self._check_policy()  # again: another run may have finished in between

    def _check_policy(self) -> None:
        """Never silently replace an earlier run: resume it, overwrite on purpose, or pick another folder."""
        last = self.path / "last.pth"
        if self.c.RESUME and not last.is_file():
            raise RunExists(f"--RESUME=True but there is no {last} to continue from")
        if not self.c.RESUME and not self.c.OVERWRITE and last.is_file():
            raise RunExists(
                f"{self.path}/ already holds a run (last.pth). Continue it with --RESUME=True, "
                f"write elsewhere with --CHECKPOINT_DIR=..., or replace it with --OVERWRITE=True"
            )

    def _take_lock(self):
        """flock is released by the kernel when the process dies, so a killed run never leaves a
        stale lock; two runs writing one folder would mix one run's model with the other's split."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / "run.lock", "a+")  # held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunExists(
                f"another training run ({owner}) is writing to {self.path}/; wait for it to finish "
                f"or use another --CHECKPOINT_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        removed = remove_stale_temporaries(self.path)
        if removed:
            print(
                f"Removed {removed} temporary file(s) left in {self.path}/ by an interrupted save", flush=True
            )
        return handle

    def split(self, table: pd.DataFrame, make_split) -> pd.DataFrame:
        """The saved split when resuming (so validation stays the same images), `make_split()` otherwise."""
        path = self.path / SPLIT_FILE
        if self.c.RESUME and path.is_file():
            split = read_split(path)
            if set(split["image_name"]) != set(table["image_name"]):
                raise SplitError(
                    f"{path} lists other images than the data now has; resume with the same data, "
                    f"or start a new run"
                )
            return split.set_index("image_name").loc[table["image_name"]].reset_index()
        split = make_split()
        if self.rank == 0:
            write_split(split, path)
        return split

    def restore(self, model, optimizer, scheduler, scaler, device, ema=None) -> tuple[int, list, dict]:
        """Model, optimizer, scheduler, scaler, weight average and RNG state from last.pth:
        (epochs done, history, best). With EMA, model_state is the average (what is evaluated) and
        training_model_state the weights being trained."""
        ckpt = load_checkpoint(self.path / "last.pth", map_location=device)
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{self.path / 'last.pth'} has no optimizer state; cannot resume from it")
        if (ema is None) != (ckpt.get("ema_state") is None):
            raise CheckpointError(f"{self.path / 'last.pth'}: EMA_DECAY must stay as the run started")
        model.load_state_dict(ckpt.get("training_model_state", ckpt["model_state"]))
        if ema is not None:
            ema.averaged.load_state_dict(ckpt["ema_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        random.setstate(ckpt["rng"]["python"])
        if torch.cuda.is_available() and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
        if self.rank == 0:
            print(
                f"Resuming after epoch {ckpt['epoch']} of {self.c.NUM_EPOCHS} from {self.path / 'last.pth'}"
            )
        return ckpt["epoch"], list(ckpt["history"]), dict(ckpt["best"])

    def save_epoch(self, model, optimizer, scheduler, scaler, epoch, history, best, ema=None) -> None:
        """Best checkpoint (if this epoch is best), then last.pth, then the history and its plot. A Ctrl-C
        meanwhile waits until all of them are written: the run then stops with a consistent folder.
        With a weight average (ema) it is the model saved for inference; last.pth keeps both."""
        with interrupts_deferred():
            self._save_epoch(model, optimizer, scheduler, scaler, epoch, history, best, ema)

    def _save_epoch(self, model, optimizer, scheduler, scaler, epoch, history, best, ema) -> None:
        trained, model = model, (ema.module if ema is not None else model)
        record = history[-1]
        if best.get("epoch") == epoch + 1:
            path = self.path / f"best_model_epoch{epoch + 1}.pth"
            save_checkpoint(self.inference_payload(model, epoch, record), path)
            for old in self.path.glob("best_model_epoch*.pth"):
                if old != path:
                    old.unlink()  # only after the new best is safely written
            link_as(path, self.path / BEST_FILE)
            print(f"  * new best epoch -> {path} (and {BEST_FILE})", flush=True)
        last = self.inference_payload(model, epoch, record)
        last.update(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "rng": rng_state(),
                "history": history,
                "best": best,
                **(
                    {"training_model_state": trained.state_dict(), "ema_state": ema.averaged.state_dict()}
                    if ema is not None
                    else {}
                ),
            }
        )
        save_checkpoint(last, self.path / "last.pth")
        self.write_history(history, best)
        plot_training_curves({"epochs": history}, self.path / "training_curves.png")

    def inference_payload(self, model, epoch: int, record: dict) -> dict:
        """Everything prediction needs, in plain types so that weights_only=True loading works."""
        return {
            "format": FORMAT,
            "arch": self.c.ARCH,
            "img_size": self.c.IMG_SIZE,
            "input_fit": self.c.INPUT_FIT,
            "colour_constancy": self.c.COLOUR_CONSTANCY,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "threshold": 0.5,
            "temperature": 1.0,
            "model_state": model.state_dict(),
            **({"classes": list(model.classes)} if model.classes else {}),
            "config": dict(vars(self.c)),
            "epoch": epoch + 1,
            "metrics": record,
            "versions": versions(),
            "split_file": SPLIT_FILE,
            "split_sha256": split_digest(self.path / SPLIT_FILE),
        }

    def write_history(self, history: list, best: dict) -> None:
        atomic_write_json(
            self.path / "training_history.json",
            {
                "config": dict(vars(self.c)),
                "versions": versions(),
                "processes": self.world_size,  # BATCH_SIZE is per process: each step sees global_batch
                "global_batch": self.c.BATCH_SIZE * self.world_size,
                "epochs": history,
                "best_epoch": best.get("epoch"),
                "best_val_auc": best.get("val_auc"),
                "best_checkpoint": f"best_model_epoch{best['epoch']}.pth" if best.get("epoch") else None,
                "skipped_files": sum(r["skipped_files"] for r in history),
                "split_file": SPLIT_FILE,
            },
        )
        summary = pd.DataFrame(
            [{k: r.get(k) for k in SUMMARY_COLUMNS} for r in history], columns=SUMMARY_COLUMNS
        )
        atomic_write_text(self.path / "summary.csv", summary.to_csv(index=False))


def link_as(source: Path, name: Path) -> None:
    """`name` becomes the same file as `source` (a hard link, else a copy), replaced atomically."""
    staged = name.with_name(name.name + ".tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, staged)
    os.replace(staged, name)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT until the block ends, then raise KeyboardInterrupt if one came: a Ctrl-C inside a
    save would otherwise interrupt a library half-way through loading or writing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class TensorBoardLog:
    """TENSORBOARD=True: CHECKPOINT_DIR/tensorboard/ gets the loss, learning rate and images/s every
    LOG_EVERY steps and the validation metrics every epoch (`tensorboard --logdir CHECKPOINT_DIR`),
    so a long run can be watched from another machine. Rank 0 only."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        for name, value in (("train/loss", loss), ("train/lr", lr), ("train/images_per_s", images_per_s)):
            self.writer.add_scalar(name, value, step)

    def progress(self, first_step: int, scheduler):
        """engine.train_one_epoch's on_progress for an epoch that starts at global step first_step."""
        return lambda i, loss, speed: self.step(first_step + i, loss, scheduler.get_last_lr()[-1], speed)

    def epoch(self, record: dict) -> None:
        for key in SUMMARY_COLUMNS[1:]:
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
