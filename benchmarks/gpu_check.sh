#!/usr/bin/env bash
# The GPU check, prepared to run once on an H100/H200 (a few minutes):
# a synthetic 20,000-image cache at 256 px, then model-only, data-only and end-to-end images/s at
# batch 256, bf16, channels_last, eager and compiled. Needs only PyTorch, torchvision, OpenCV,
# pandas, scikit-learn and tqdm. Copy the printed JSON lines into docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python benchmarks/throughput.py --only model,loader,data,e2e --batch 256 --img-size 224 --cache-images 20000 \
    --cache-size 256 --steps 60 --warmup-steps 15 2>/dev/null
python benchmarks/throughput.py --only model,e2e --batch 256 --img-size 224 --cache-images 20000 \
    --cache-size 256 --steps 60 --warmup-steps 25 --compile 2>/dev/null
