"""Export a checkpoint to ONNX, check it against PyTorch, and optionally quantize it to int8.

    python src/inference/export.py --checkpoint CKPT [--out model.onnx] [--int8] [--images DIR]

The ONNX model takes float32 (N, 3, S, S) RGB images in 0..255 (any batch size); normalisation is
inside the graph, and the image size, input preparation, calibration, threshold, quality gate and
refer rule travel in its metadata, so predict.py and the service use it exactly like the
checkpoint; a checkpoint with the "unlike training images" distance gets it as a second output,
`unfamiliarity`. The export is checked on real images (the run's validation split, or --images):
probabilities (and that distance) must match PyTorch within 1e-4.
--int8 also writes a statically quantized model (QDQ, per-channel weights in 7 bits, activations
calibrated on validation images) with ONNX Runtime, and prints its AUC next to fp32's. The weights
use 7 of their 8 bits so that CPUs without VNNI (AVX2 only) give the same results as those with it
(docs/deployment.md).
TensorRT: `trtexec --onnx=model.onnx --saveEngine=model.plan --fp16` builds an engine from the export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from src.core.checkpoint import load_checkpoint, model_from_checkpoint, synthetic_training_data
from src.core.familiarity import Familiarity
from src.core.metrics import calibrated, roc_auc
from src.core.run_data import own_validation_set
from src.data.atomic import replace_atomically
from src.data.images import index_images
from src.data.labels import DataError
from src.data.transforms import InputSpec, load_input
from src.errors import ProjectError, command
from src.inference.predictor import ONNX_INPUT, ONNX_UNFAMILIARITY, Predictor

PARITY_TOLERANCE = 1e-4
NEW_EXPORTER = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9)


class ExportError(ProjectError):
    """The export does not compute what the checkpoint computes."""


SETTING_KEYS = (
    "arch",
    "img_size",
    "input_fit",
    "colour_constancy",
    "mean",
    "std",
    "threshold",
    "temperature",
    "logit_bias",
    "threshold_rule",
    "calibrated_on",
    "calibrated_at",
    "calibration_tta",
    "quality_gate",
    "refer_rule",
    "epoch",
    "metrics",
)


class WithFamiliarity(torch.nn.Module):
    """The model with the "unlike training images" distance as a second output (unfamiliarity, per
    image; above 1: flagged), so that an export refuses what its checkpoint refuses: the features
    and the logit of one pass, as MelanomaNet.logits_and_features gives them to PyTorch callers."""

    def __init__(self, model, fitted: dict):
        super().__init__()
        self.model, self.familiarity = model, Familiarity(fitted)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.model.logits_and_features(x)
        return logits, self.familiarity(features)


def settings_of(ckpt: dict, source: str) -> dict:
    settings = {k: ckpt[k] for k in SETTING_KEYS if k in ckpt}
    if ckpt.get("familiarity"):
        settings["familiarity_threshold"] = float(ckpt["familiarity"]["threshold"])
    settings.update(
        {
            "source_checkpoint": source,
            "input": "float32 (N, 3, S, S) RGB 0..255; normalised in the graph",
            "synthetic_training_data": synthetic_training_data(ckpt),
        }
    )
    return settings


def export_onnx(model, img_size: int, path: Path, settings: dict) -> Path:
    """Write the fp32 ONNX model (dynamic batch axis) with the settings in its metadata; a model
    with a WithFamiliarity wrapper has the distance as a second output."""
    import onnx

    model = model.cpu().eval()
    outputs = ["logits", ONNX_UNFAMILIARITY] if isinstance(model, WithFamiliarity) else ["logits"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        example = (torch.zeros(2, 3, img_size, img_size),)
        names = {"input_names": [ONNX_INPUT], "output_names": outputs}
        if NEW_EXPORTER:
            torch.onnx.export(
                model,
                example,
                str(raw),
                dynamo=True,
                verbose=False,
                optimize=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                **names,
            )
        else:  # torch < 2.9: the TorchScript exporter, then the default
            torch.onnx.export(
                model,
                example,
                str(raw),
                opset_version=17,
                dynamic_axes={name: {0: "batch"} for name in [ONNX_INPUT, *outputs]},
                **names,
            )
        graph = onnx.load(str(raw))  # also pulls in weights the exporter stored beside the file
    entry = graph.metadata_props.add()
    entry.key, entry.value = "settings", json.dumps(settings)
    replace_atomically(path, lambda tmp: onnx.save(graph, tmp))
    return path


def real_inputs(ckpt: dict, ckpt_path: Path, images: str | None, limit: int):
    """(uint8 batch, labels or None) of real images: --images, else the run's validation split."""
    size = InputSpec.of(ckpt)
    if images:
        paths = sorted(index_images(images).values())[:limit]
        if not paths:
            raise DataError(f"no images in {images}/")
        return torch.stack([load_input(p, size) for p in paths]), None
    table, _ = own_validation_set(ckpt, ckpt_path)
    table = table.sample(n=min(limit, len(table)), random_state=0) if len(table) > limit else table
    return torch.stack([load_input(p, size) for p in table["path"]]), table["target"].to_numpy()


def check_parity(model, onnx_path: Path, x: torch.Tensor, ckpt: dict) -> float:
    """Largest |p_onnx - p_pytorch| over the real inputs (calibrated probabilities), and with a
    familiarity output the largest difference of the unfamiliarity too (both must be tiny)."""
    with torch.no_grad():
        reference = model.cpu().eval()(x)
    reference, distance = reference if isinstance(reference, tuple) else (reference, None)
    exported, exported_distance = Predictor(onnx_path).scores(x)
    t, b = ckpt.get("temperature", 1.0), ckpt.get("logit_bias", 0.0)
    diff = float(np.abs(calibrated(exported, t, b) - calibrated(reference.numpy(), t, b)).max())
    if distance is not None:
        diff = max(diff, float(np.abs(exported_distance - distance.numpy()).max()))
    return diff


def quantize_int8(fp32_path: Path, out: Path, x: torch.Tensor, settings: dict) -> Path:
    """Static int8 (QDQ, per-channel weights), activation ranges calibrated on the images in x.

    reduce_range: weights in [-64, 64]. Without VNNI, ONNX Runtime's int8 kernels add pairs of
    uint8 x int8 products in 16 bits (AVX2's vpmaddubsw), which saturate with full-range weights,
    so the same file would score differently by CPU. With 7-bit weights a pair sum fits and every
    x86 CPU computes the same logits (measured: docs/deployment.md)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(x.float().numpy()[i : i + 16] for i in range(0, len(x), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,  # see the docstring: the same results on CPUs with and without VNNI
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        graph = onnx.load(str(quantized))
    del graph.metadata_props[:]
    entry = graph.metadata_props.add()
    entry.key = "settings"
    entry.value = json.dumps(
        {
            **settings,
            "quantization": f"int8 static QDQ, per-channel 7-bit weights, "
            f"activations calibrated on {len(x)} images",
        }
    )
    replace_atomically(out, lambda tmp: onnx.save(graph, tmp))
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Export a checkpoint to ONNX (and int8).")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", help="ONNX path (default: the checkpoint's name with .onnx)")
    ap.add_argument("--int8", action="store_true", help="also write a statically quantized int8 model")
    ap.add_argument(
        "--images",
        help="folder of real images for the parity check and int8 calibration "
        "(default: the run's validation split)",
    )
    ap.add_argument("--calibration-images", type=int, default=256)
    return ap.parse_args(argv)


def export_checked(model, ckpt: dict, out: Path, settings: dict, x: torch.Tensor) -> float:
    """Export beside `out` under a hidden name, and move it into place only once it matches
    PyTorch: a failed export leaves nothing that serve.py or predict.py would load."""
    staged = out.with_name(f".{out.stem}.unchecked.onnx")
    try:
        export_onnx(model, ckpt["img_size"], staged, settings)
        diff = check_parity(model, staged, x, ckpt)
        if diff > PARITY_TOLERANCE:
            raise ExportError(
                f"ONNX export differs from PyTorch by {diff:.2e} (tolerance {PARITY_TOLERANCE}); "
                f"nothing was written to {out}"
            )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return diff


def export(args) -> dict:
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    model = WithFamiliarity(model, ckpt["familiarity"]) if ckpt.get("familiarity") else model
    out = onnx_path(args)
    settings = settings_of(ckpt, ckpt_path.name)
    x, labels = real_inputs(ckpt, ckpt_path, args.images, args.calibration_images)
    result = {"onnx": str(out), "images": len(x)}
    result["parity_max_abs_diff"] = export_checked(model, ckpt, out, settings, x[:64])
    if args.int8:
        int8 = quantize_int8(out, out.with_name(out.stem + "_int8.onnx"), x, settings)
        result["int8"] = str(int8)
        if labels is not None and len(set(labels)) == 2:
            fp32_p, int8_p = Predictor(out).logits(x), Predictor(int8).logits(x)
            result["auc_fp32"], result["auc_int8"] = roc_auc(labels, fp32_p), roc_auc(labels, int8_p)
    return result


def onnx_path(args) -> Path:
    return Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")


def write_failure(e: OSError, out: Path) -> ExportError:
    """The ONNX writers report a full disk as a bare short write ("524288 requested and 82144
    written", from numpy), naming no file: say which folders were being written to."""
    return ExportError(
        f"could not write the ONNX model ({e}): is there room in {out.parent.resolve()} and in the "
        f"temporary folder {tempfile.gettempdir()}? An unchecked model is never left at {out}"
    )


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = export(args)
    except OSError as e:
        if e.filename is not None:  # already names its file
            raise
        raise write_failure(e, onnx_path(args)) from e
    print(
        f"wrote {result['onnx']}: max |p_onnx - p_pytorch| = {result['parity_max_abs_diff']:.2e} "
        f"on {min(64, result['images'])} real images (tolerance {PARITY_TOLERANCE})"
    )
    if "int8" in result:
        auc = (
            (
                f"; AUC on {result['images']} validation images: fp32 {result['auc_fp32']:.4f}, "
                f"int8 {result['auc_int8']:.4f}"
            )
            if "auc_int8" in result
            else ""
        )
        print(f"wrote {result['int8']}{auc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
