"""The classifier: a torchvision ResNet with a one-logit head, with input normalisation built in.

The model takes uint8 (or 0..255 float) images and normalises them itself, so the data path ships
uint8 to the device and every consumer (evaluation, prediction, serving, ONNX) gets the same maths.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from src.errors import ProjectError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101")
FEATURE_SIZES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}  # the head's input
IMG_SIZE_RANGE = (32, 2048)  # ResNets downsample 32x; above 2048 px a batch no longer fits any GPU


class WeightsUnavailable(ProjectError, RuntimeError):
    pass


class MelanomaNet(nn.Module):
    def __init__(self, arch: str = "resnet50", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"ARCH must be one of {ARCHITECTURES}, not {arch!r}")
        self.backbone = getattr(torchvision.models, arch)(weights=None)
        self.backbone.fc = nn.Linear(self.backbone.fc.in_features, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in 0..255 -> (N,) melanoma logits."""
        return self.logits_and_features(x)[0]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) logits and (N, D) pooled features, the head's input (src/core/familiarity.py)."""
        b = self.backbone
        x = (x.float() - self.mean) / self.std
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        features = torch.flatten(b.avgpool(x), 1)
        return b.fc(features).squeeze(1), features

    def head_parameters(self):
        return list(self.backbone.fc.parameters())

    def backbone_parameters(self):
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def imagenet_weights(arch: str):
    """torchvision's ImageNet weights enum member for `arch` (the better V2 weights where they exist)."""
    enum = torchvision.models.get_model_weights(arch)
    return getattr(enum, "IMAGENET1K_V2", None) or enum.IMAGENET1K_V1


def weights_cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def published_hash_prefix(url: str) -> str:
    """The SHA-256 prefix that torchvision puts in its weight file names: resnet50-11ad3fa6.pth."""
    match = re.search(r"-([a-f0-9]{8,64})\.pth$", os.path.basename(url))
    if not match:
        raise WeightsUnavailable(f"{url} carries no hash in its name; cannot verify it")
    return match.group(1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(weights, cached: Path) -> None:
    """Download to a temporary name, then rename: an interrupted download never looks cached."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".partial")
    try:
        torch.hub.download_url_to_file(weights.url, str(tmp), progress=True)
        os.replace(tmp, cached)
    except Exception as e:  # URLError, socket errors, HTTP errors...
        tmp.unlink(missing_ok=True)
        raise WeightsUnavailable(
            f"ImageNet weights are not in the torch cache and could not be downloaded "
            f"({type(e).__name__}: {e}).\n"
            f"  Expected file: {cached}\n"
            f"  Download {weights.url} on a machine with network and copy it there "
            f"(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it),\n"
            f"  or train from random weights with --PRETRAINED=False (much weaker on real data)."
        ) from None


def verified_state_dict(weights, cached: Path) -> dict:
    """The weight file's SHA-256 must start with the hash in its published name, and it is loaded with
    weights_only=True: a planted or corrupted file in the cache is refused and never unpickled."""
    expected, actual = published_hash_prefix(weights.url), sha256_of(cached)
    if not actual.startswith(expected):
        raise WeightsUnavailable(
            f"{cached} is not the published file: its SHA-256 is {actual[:16]}..., the name promises "
            f"{expected}... Refusing to load it. Delete it and download {weights.url} again."
        )
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means: not plain weights
        raise WeightsUnavailable(
            f"{cached} could not be loaded as plain weights: {str(e).splitlines()[0]}"
        ) from None


def load_imagenet_backbone(model: MelanomaNet, arch: str) -> None:
    """Load ImageNet weights from the torch cache, downloading them if needed; fail clearly offline."""
    weights = imagenet_weights(arch)
    cached = weights_cache_path(weights)
    if not cached.is_file():
        fetch_weights(weights, cached)
    state = verified_state_dict(weights, cached)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet's 1000-class head
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected, (missing, unexpected)


def build_model(arch: str = "resnet50", pretrained: bool = True) -> MelanomaNet:
    model = MelanomaNet(arch)
    if pretrained:
        load_imagenet_backbone(model, arch)
    return model
