"""CPU inference benchmark: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8.

    python benchmarks/inference.py [--checkpoint checkpoints/demo/best_model_epoch4.pth] [--size 224]

Prints batch-1 latency (median and p95) and batch throughput for each at --size px, and the ROC AUC
of each on the checkpoint's validation split at its own image size, so the accuracy cost of
quantization is a figure. ResNet weights work at any input size, so a 64 px demo checkpoint can be
timed at 224 px. One JSON line per measurement, then a Markdown table. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from src.core.checkpoint import load_checkpoint, model_from_checkpoint
from src.core.metrics import roc_auc
from src.inference.export import export_onnx, quantize_int8, real_inputs, settings_of
from src.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


def runners(ckpt: dict, size: int, calibration: torch.Tensor, folder: Path) -> dict:
    """name -> function(uint8 batch) -> logits, for the three variants at `size` px."""
    model = model_from_checkpoint(ckpt)
    settings = {**settings_of(ckpt, "benchmark"), "img_size": size}
    fp32 = export_onnx(model, size, folder / f"fp32_{size}.onnx", settings)
    int8 = quantize_int8(fp32, folder / f"int8_{size}.onnx", calibration, settings)
    threads = torch.get_num_threads()
    onnx_fp32, onnx_int8 = Predictor(fp32, threads=threads), Predictor(int8, threads=threads)

    @torch.no_grad()
    def pytorch(x):
        return model(x).numpy()

    return {"pytorch fp32": pytorch, "onnx fp32": onnx_fp32.logits, "onnx int8": onnx_int8.logits}


def latency(fn, x: torch.Tensor, runs: int) -> list[float]:
    for _ in range(3):
        fn(x)  # warm-up: allocations, ORT's first-run optimisations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return (
        torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear")
        .round()
        .clamp(0, 255)
        .byte()
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/demo/best_model_epoch4.pth")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    x_val, labels = real_inputs(ckpt, ckpt_path, None, 10_000)  # whole validation split, own size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        timing = runners(ckpt, args.size, resized(x_val[:128], args.size), Path(tmp))
        scoring = (
            timing
            if ckpt["img_size"] == args.size
            else runners(ckpt, ckpt["img_size"], x_val[:256], Path(tmp))
        )
        one, batch = resized(x_val[:1], args.size), resized(x_val[: args.batch], args.size)
        for name, fn in timing.items():
            t1 = np.array(latency(fn, one, args.runs)) * 1e3
            tb = np.array(latency(fn, batch, max(5, args.runs // 10)))
            auc = roc_auc(labels, scoring[name](x_val))
            rows.append(
                {
                    "variant": name,
                    "size": args.size,
                    "threads": args.threads,
                    "batch1_median_ms": round(float(np.median(t1)), 2),
                    "batch1_p95_ms": round(float(np.percentile(t1, 95)), 2),
                    f"batch{args.batch}_images_per_s": round(args.batch / float(np.median(tb)), 1),
                    "auc": round(float(auc), 4),
                    "auc_images": len(labels),
                    "auc_size": ckpt["img_size"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["batch1_median_ms"]
    print(
        f"\n| variant | batch-1 median (ms) | batch-1 p95 (ms) | batch {args.batch} (images/s) "
        "| speed-up at batch 1 | AUC |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['batch1_median_ms']} | {r['batch1_p95_ms']} "
            f"| {r[f'batch{args.batch}_images_per_s']} "
            f"| {base / r['batch1_median_ms']:.2f}x | {r['auc']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
