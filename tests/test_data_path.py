"""The fast data path computes what the plain one would: uint8 + in-model normalisation == CPU float."""

import json

import pytest
import torch
import torchvision.transforms.functional as TF

from src.core.model import MelanomaNet
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_input

from helpers import gradient_image, run_script, write_jpeg


def reference_input(path, size):
    """What a textbook torchvision pipeline feeds the backbone: float in 0..1, normalised on the CPU."""
    return TF.normalize(load_input(path, size).float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def test_uint8_path_gives_the_same_logits_as_cpu_normalisation(tmp_path):
    torch.manual_seed(0)
    model = MelanomaNet("resnet18").eval()
    paths = [write_jpeg(tmp_path / f"{i}.jpg", gradient_image(90 + i, 120)) for i in range(3)]
    uint8 = torch.stack([load_input(p, 48) for p in paths])
    reference = torch.stack([reference_input(p, 48) for p in paths])
    with torch.no_grad():
        ours, textbook = model(uint8), model.backbone(reference).squeeze(1)
    torch.testing.assert_close(ours, textbook, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_normalisation_matches_cpu(tmp_path):
    model = MelanomaNet("resnet18").eval()
    x = torch.stack([load_input(write_jpeg(tmp_path / "a.jpg", gradient_image()), 64)])
    with torch.no_grad():
        cpu, gpu = model(x), model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(cpu, gpu, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_throughput_benchmark_runs_and_reports_every_section():
    r = run_script(
        "benchmarks/throughput.py",
        "--only",
        "model,data,e2e,loader",
        "--steps",
        1,
        "--warmup-steps",
        1,
        "--cache-images",
        96,
        "--cache-size",
        48,
        "--img-size",
        32,
        "--batch",
        16,
        "--arch",
        "resnet18",
    )
    assert r.returncode == 0, r.stderr
    lines = {d["bench"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert set(lines) == {"model-only", "synthetic cache", "loader-only", "data-only", "end-to-end"}
    assert lines["loader-only"]["images"] > 0 and lines["loader-only"]["images_per_s_per_worker"] > 0
    assert lines["end-to-end"]["ratio_to_model_only"] > 0 and lines["data-only"]["images"] > 0
    assert len(lines["data-only"]["worker_private_mb_end"]) == lines["data-only"]["workers"]
