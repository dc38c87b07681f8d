"""The classifier: a torchvision backbone (ResNet, EfficientNet, ConvNeXt or ViT) with its ImageNet
head replaced, and input normalisation built in.

The model takes uint8 (or 0..255 float) images and normalises them itself, so the data path ships
uint8 to the device and every consumer (evaluation, prediction, serving, ONNX) gets the same maths.
Its output is always one melanoma logit per image. With `classes` (the diagnosis target) the head
has one output per diagnosis, trained with a softmax, and the melanoma logit is read from it:
log p(melanoma) - log(1 - p(melanoma)), so thresholds, calibration and the context stage are the
same for both targets.
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

# family -> (path of the final Linear layer, path of the last convolutional block for Grad-CAM)
FAMILIES = {
    "resnet": ("fc", "layer4"),
    "efficientnet": ("classifier.1", "features"),
    "convnext": ("classifier.2", "features"),
    "vit": ("heads.head", None),  # a transformer: no convolutional map for Grad-CAM
}
# arch -> the head's input size (the pooled features of src/core/familiarity.py); torchvision's names
FEATURE_SIZES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
FEATURE_SIZES |= {
    f"efficientnet_b{k}": n for k, n in enumerate((1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560))
}
FEATURE_SIZES |= {"efficientnet_v2_s": 1280, "efficientnet_v2_m": 1280}
FEATURE_SIZES |= {"convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024, "convnext_large": 1536}
FEATURE_SIZES |= {"vit_b_16": 768, "vit_b_32": 768, "vit_l_16": 1024}
ARCHITECTURES = tuple(FEATURE_SIZES)
IMG_SIZE_RANGE = (32, 2048)  # the backbones downsample 32x; above 2048 px a batch no longer fits any GPU
MELANOMA = "melanoma"  # the diagnosis whose probability every metric uses


class WeightsUnavailable(ProjectError, RuntimeError):
    pass


def melanoma_logit(out: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) diagnosis logits -> (N,) melanoma logits: log p(class k) - log(1 - p(class k))."""
    others = torch.cat([out[:, :k], out[:, k + 1 :]], dim=1)
    return out[:, k] - torch.logsumexp(others, dim=1)


def family(arch: str) -> str:
    return arch.split("_")[0].rstrip("0123456789")


def size_problem(arch: str, img_size: int) -> str:
    """A ViT cuts the image into patches of 16 or 32 pixels: the side must be a multiple of it."""
    patch = int(arch.rsplit("_", 1)[1]) if family(arch) == "vit" else 1
    return f"{arch} needs IMG_SIZE a multiple of {patch}" if img_size % patch else ""


def _module(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


class MelanomaNet(nn.Module):
    def __init__(
        self,
        arch="resnet50",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        img_size=224,
        classes: tuple | None = None,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"ARCH must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
        if classes is not None and MELANOMA not in classes:
            raise ValueError(f"the diagnosis classes must include {MELANOMA!r}: {classes}")
        extra = {"image_size": img_size} if family(arch) == "vit" else {}
        self.backbone = torchvision.models.get_model(arch, weights=None, **extra)
        self.head_path, self.cam_path = FAMILIES[family(arch)]
        parent, _, name = self.head_path.rpartition(".")
        owner = _module(self.backbone, parent) if parent else self.backbone
        owner._modules[name] = nn.Linear(FEATURE_SIZES[arch], len(classes) if classes else 1)
        self.classes = tuple(classes) if classes else None
        self.melanoma_index = self.classes.index(MELANOMA) if self.classes else 0
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    @property
    def head(self) -> nn.Linear:
        return _module(self.backbone, self.head_path)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in 0..255 -> (N, C) head outputs (C = 1 for the melanoma target)."""
        return self.backbone((x.float() - self.mean) / self.std)

    def forward(self, x: torch.Tensor, all_classes: bool = False) -> torch.Tensor:
        """(N, 3, H, W) images in 0..255 -> (N,) melanoma logits (all_classes: the (N, C) outputs the
        diagnosis target trains on)."""
        out = self.class_logits(x)
        if all_classes:
            return out
        return out.squeeze(1) if self.classes is None else melanoma_logit(out, self.melanoma_index)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) logits and (N, D) pooled features, the head's input (src/core/familiarity.py)."""
        captured = []
        hook = self.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits = self(x)
        finally:
            hook.remove()
        return logits, captured[0]

    def cam_layer(self) -> nn.Module | None:
        """The last convolutional block (Grad-CAM's layer), None for a transformer."""
        return _module(self.backbone, self.cam_path) if self.cam_path else None

    def head_parameters(self):
        return list(self.head.parameters())

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


def load_imagenet_backbone(model: MelanomaNet, arch: str, img_size: int = 224) -> None:
    """Load ImageNet weights from the torch cache, downloading them if needed; fail clearly offline."""
    weights = imagenet_weights(arch)
    cached = weights_cache_path(weights)
    if not cached.is_file():
        fetch_weights(weights, cached)
    state = verified_state_dict(weights, cached)
    head = model.head_path + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}  # ImageNet's 1000-class head
    if family(arch) == "vit" and img_size != 224:  # more or fewer patches than ImageNet's 224 px
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(img_size, model.backbone.patch_size, state)
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    assert set(missing) == {head + "weight", head + "bias"} and not unexpected, (missing, unexpected)


def build_model(
    arch: str = "resnet50", pretrained: bool = True, img_size: int = 224, classes: tuple | None = None
) -> MelanomaNet:
    model = MelanomaNet(arch, img_size=img_size, classes=classes)
    if pretrained:
        load_imagenet_backbone(model, arch, img_size)
    return model
