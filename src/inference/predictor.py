"""A loaded model, PyTorch checkpoint (.pth) or ONNX export (.onnx), behind one interface.

Everything that turns pixels into a probability comes from the model file: image size, calibration
(temperature and bias) and the decision threshold. Images go through the data layer's one
preprocessing path (src/data/transforms.py), so a prediction here equals what evaluation computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from src.core.checkpoint import (
    CheckpointError,
    calibration_tta,
    check_settings,
    load_model,
    synthetic_training_data,
    weights_digest,
)
from src.core.decision import answer, refer_rule, uncertain
from src.core.ensemble import load_members, read_ensemble
from src.core.familiarity import Familiarity, reasons_with_familiarity
from src.core.metrics import calibrated
from src.core.runtime import Runtime, view_logits
from src.data.images import decode_bytes
from src.data.quality import check, decode_measured_bytes
from src.data.transforms import InputSpec, dihedral_views, preprocess

ONNX_INPUT = "images"  # float32 (N, 3, S, S), RGB 0..255; normalisation is inside the graph
ONNX_UNFAMILIARITY = "unfamiliarity"  # the optional second output: src/core/familiarity.py, per image


def file_version(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.name}@{digest.hexdigest()[:12]}"


class Scorer:
    """What every model behind predict.py and the service offers: calibrated probabilities and the
    one answer per image at the saved threshold, from logits (subclasses give logits, member_scores
    and the settings these methods read)."""

    img_size: int
    models = 1  # how many models give logits (each gives one row per view: member_scores)
    quality_gate: dict | None = None  # src/data/quality.py: what makes an image unassessable
    unfamiliar_at: float | None = None  # the familiarity distance's threshold; None: no such check
    threshold: float
    temperature: float
    bias: float

    def rows_per_image(self, tta: bool) -> int:
        """Rows of member_scores: each model's logit for each view (8 with TTA)."""
        return self.models * (8 if tta else 1)

    def info(self) -> dict:
        return {
            "model_file": self.path.name + ("/" if self.path.is_dir() else ""),
            "version": self.version,
            "kind": self.kind,
            "architecture": self.arch,
            "image_size": self.img_size,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "logit_bias": self.bias,
            "calibrated_on": self.calibrated_on,
            "calibrated_at": self.calibrated_at,
            "threshold_rule": self.threshold_rule,
            "refer_rule": self.refer_rule["text"],
            "checks": self.checks(),
            "calibration_tta": self.views(None),  # the views the threshold was fitted on
            "training_data": self.training_data,
            "synthetic_training_data": self.synthetic,
            "epoch": self.epoch,
            "training_metrics": {k: v for k, v in self.metrics.items() if k.startswith("val_")},
        }

    def checks(self) -> list[str]:
        """What can make an image unassessable for this model (shown on the model card)."""
        found = [f"image quality ({', '.join(self.quality_gate)})"] if self.quality_gate else []
        return found + (["unlike training images (feature distance)"] if self.unfamiliar_at else [])

    def views(self, tta: bool | None) -> bool:
        """TTA or not: as the calibration was fitted (None), or refused when asked otherwise."""
        return calibration_tta(self._calibration, tta, self.path)

    def probabilities(self, logits) -> np.ndarray:
        return calibrated(logits, self.temperature, self.bias)

    def logit_bytes(self, data: bytes, tta: bool = False, name: str = "upload") -> float:
        return float(self.score_bytes(data, tta, name)[0].mean())

    def member_logits(self, images, tta: bool = False) -> np.ndarray:
        """(K x V, N): each model's logits for each view (V = 8 with TTA, else 1)."""
        return self.member_scores(images, tta)[0]

    def score_bytes(
        self, data: bytes, tta: bool = False, name: str = "upload"
    ) -> tuple[np.ndarray, str | None]:
        """(K,) logits of one encoded image and why it cannot be assessed ("" when it can, None when
        the model has no check at all), from one decode: the pixels the model sees."""
        reason = None
        if self.quality_gate:
            rgb, values = decode_measured_bytes(data, self.img_size, name)
            reason = check(self.quality_gate, values)
        else:
            rgb = decode_bytes(data, self.img_size, name)
        logits, unfamiliarity = self.member_scores(preprocess(rgb, self.input)[None], tta)
        if unfamiliarity is not None:
            reason = str(reasons_with_familiarity([reason or ""], unfamiliarity)[0])
        return logits[:, 0], reason

    def uncertain(self, probability, spread) -> np.ndarray:
        """Where the members disagree about the side of the threshold (the refer rule's band)."""
        return uncertain(probability, self.threshold, spread, self.temperature, self.refer_rule)

    def decision(self, members: np.ndarray, reason: str | None = None) -> dict:
        """The image model's answer for one image from its (K,) logits: calibrated probability, the
        saved threshold, refer when it cannot be assessed or the members straddle the threshold."""
        p = float(self.probabilities(float(np.mean(members))))
        spread = float(np.std(members)) if len(members) > 1 else None
        return answer(p, self.threshold, "image", not reason, bool(self.uncertain(p, spread)))

    def predict_bytes(self, data: bytes, tta: bool | None = None, name: str = "upload") -> dict:
        return self.decision(*self.score_bytes(data, self.views(tta), name))


class Predictor(Scorer):
    def __init__(self, path: str | Path, threads: int | None = None, local_rank: int = 0):
        self.path, self.local_rank = Path(path), local_rank
        if not self.path.is_file():
            raise CheckpointError(f"model file not found: {self.path}")
        if threads:
            torch.set_num_threads(threads)
        if self.path.suffix.lower() == ".onnx":
            self._load_onnx(threads)
            self.version = file_version(self.path)  # an export is written once, calibration included
        else:
            self._load_torch()

    def _load_torch(self) -> None:
        self.model, ckpt = load_model(self.path)
        self.version = f"{self.path.name}@{weights_digest(ckpt['model_state'])[:12]}"  # the weights only
        self.rt = Runtime.for_inference(ckpt, self.local_rank)
        self.model.to(self.rt.device)
        self.kind, self.session = "pytorch", None
        self._settings(ckpt)

    def _load_onnx(self, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for invalid files
            raise CheckpointError(
                f"{self.path} is not a loadable ONNX model: {str(e).splitlines()[0]}"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "settings" not in meta:
            raise CheckpointError(
                f"{self.path} was not exported by src/inference/export.py (no settings metadata)"
            )
        try:
            settings = json.loads(meta["settings"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path}: its settings metadata is not valid JSON") from None
        if not isinstance(settings, dict):
            raise CheckpointError(f"{self.path}: its settings metadata is not a JSON object")
        check_settings(settings, self.path)
        self._check_onnx_signature()
        self.kind, self.model, self.rt = "onnx", None, None
        self._settings(settings)

    def _check_onnx_signature(self) -> None:
        """One input (N, 3, S, S) named ONNX_INPUT; one output of one logit per image, and
        optionally a second, ONNX_UNFAMILIARITY, of one distance per image."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        ok = (
            len(inputs) == 1
            and inputs[0].name == ONNX_INPUT
            and len(inputs[0].shape) == 4
            and inputs[0].shape[1] == 3
            and len(outputs) in (1, 2)
            and all(len(o.shape) == 1 for o in outputs)
            and (len(outputs) == 1 or outputs[1].name == ONNX_UNFAMILIARITY)
        )
        if not ok:
            found = [(i.name, i.shape) for i in inputs], [(o.name, o.shape) for o in outputs]
            raise CheckpointError(
                f"{self.path}: expected input {ONNX_INPUT!r} (N, 3, S, S) and one output (N,) "
                f"of logits (and optionally {ONNX_UNFAMILIARITY!r}); found inputs/outputs {found}"
            )
        self.onnx_outputs = len(outputs)

    def _settings(self, s: dict) -> None:
        self.arch, self.img_size, self.input = s["arch"], s["img_size"], InputSpec.of(s)
        self.threshold = float(s.get("threshold", 0.5))
        self.temperature, self.bias = float(s.get("temperature", 1.0)), float(s.get("logit_bias", 0.0))
        self.calibrated_on, self.calibrated_at = s.get("calibrated_on"), s.get("calibrated_at")
        self.threshold_rule = s.get("threshold_rule")
        config = s.get("config") or {}
        self.training_data = config.get("METADATA_CSV")
        self.synthetic = synthetic_training_data(s)
        self._calibration = {k: s.get(k) for k in ("calibration_tta", "calibrated_on")}
        self.metrics = s.get("metrics") or {}
        self.epoch = s.get("epoch")
        self.quality_gate = s.get("quality_gate")  # checked by check_settings; None: not fitted yet
        fitted = s.get("familiarity")  # a checkpoint's; an export has it in its graph
        self.familiarity = Familiarity(fitted).to(self.rt.device) if fitted and self.rt else None
        self.unfamiliar_at = float(fitted["threshold"]) if fitted else s.get("familiarity_threshold")
        if self.kind == "onnx" and self.onnx_outputs == 1:
            self.unfamiliar_at = None
        self.refer_rule = s.get("refer_rule") or refer_rule()

    @torch.no_grad()
    def logits(self, images: torch.Tensor, tta: bool = False) -> np.ndarray:
        """(N, 3, S, S) uint8 images (torch or numpy) -> (N,) logits; tta: mean over 8 flips/transposes."""
        return self.scores(images, tta)[0]

    def scores(self, images, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) logits (the mean over the views with tta) and (N,) unfamiliarity (None without a
        fitted distance)."""
        views, far = self.member_scores(images, tta)
        return views.mean(axis=0).astype(np.float32), far

    @torch.no_grad()
    def member_scores(self, images, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(V, N) logits of each view (V = 8 with tta, else 1) and the (N,) unfamiliarity of the
        unflipped view (or None): the spread of the views is a single model's uncertainty."""
        if self.kind == "onnx":
            x = images.numpy() if isinstance(images, torch.Tensor) else images
            runs = [
                self.session.run(None, {ONNX_INPUT: np.ascontiguousarray(v, dtype=np.float32)})
                for v in (dihedral_views(x) if tta else [x])
            ]
            return np.stack([r[0] for r in runs]), (runs[0][1] if self.unfamiliar_at else None)
        x = self.rt.to_device(torch.as_tensor(images))
        with self.rt.autocast():
            out, features = view_logits(self.model, x, tta, self.familiarity is not None)
        far = None if features is None else self.familiarity(features.float()).cpu().numpy()
        return out.cpu().numpy(), far


def default_threads() -> int:
    return int(os.environ.get("THREADS", min(4, os.cpu_count() or 1)))


class Ensemble(Scorer):
    """The fold models of oof.py as one (FOLDER/ensemble.json, src/core/ensemble.py): the mean of
    their logits, calibrated and thresholded on their out-of-fold logits; member_scores gives each
    member's (and each view's), whose spread is the prediction's uncertainty."""

    def __init__(self, folder: str | Path, threads: int | None = None, local_rank: int = 0):
        self.path = Path(folder)
        spec = read_ensemble(self.path)
        self.members = load_members(self.path, spec, lambda path: Predictor(path, threads, local_rank))
        self.models = len(self.members)
        inputs = {m.input for m in self.members}
        if len(inputs) != 1:
            raise CheckpointError(
                f"{self.path}: the members prepare images differently ({sorted(map(str, inputs))})"
            )
        first = self.members[0]
        self.img_size, self.input, self.arch, self.model = first.img_size, first.input, first.arch, None
        self.rt = getattr(first, "rt", None)  # ONNX members have none
        self.kind = "ensemble"  # Grad-CAM needs one PyTorch model: refused, as for ONNX
        self.threshold, self.temperature, self.bias = (
            spec["threshold"],
            spec["temperature"],
            spec["logit_bias"],
        )
        self.calibrated_on, self.threshold_rule = spec.get("calibrated_on"), spec.get("threshold_rule")
        self._calibration = {"calibration_tta": spec["calibration_tta"], "calibrated_on": self.calibrated_on}
        self.synthetic = any(m.synthetic for m in self.members)
        self.quality_gate = next((m.quality_gate for m in self.members if m.quality_gate), None)
        self.unfamiliar_at = next((m.unfamiliar_at for m in self.members if m.unfamiliar_at), None)
        self.refer_rule = spec.get("refer_rule") or refer_rule()
        self.calibrated_at, self.training_data = None, first.training_data
        self.epoch, self.metrics = None, {}  # per member, under "members" in info()
        joined = hashlib.sha256(" ".join(m.version for m in self.members).encode()).hexdigest()[:12]
        self.version = f"{self.path.name}/ ({len(self.members)} models)@{joined}"

    def member_scores(self, images, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(K x V, N) each member's logits for each view (V = 8 with tta, else 1), and the mean
        unfamiliarity of the members that have a distance fitted (None when none has)."""
        scored = [m.member_scores(images, tta) for m in self.members]
        far = [f for _, f in scored if f is not None]
        return np.concatenate([logits for logits, _ in scored]), np.mean(far, axis=0) if far else None

    def logits(self, images: torch.Tensor, tta: bool = False) -> np.ndarray:
        return self.member_logits(images, tta).mean(axis=0)

    def info(self) -> dict:
        return {**super().info(), "members": [m.info() for m in self.members]}


def load_scorer(path: str | Path, threads: int | None = None, local_rank: int = 0) -> Scorer:
    """A checkpoint (.pth), an export (.onnx) or the folder of oof.py (an ensemble)."""
    return (
        Ensemble(path, threads, local_rank) if Path(path).is_dir() else Predictor(path, threads, local_rank)
    )
