"""The one preprocessing path, and medical-safe training augmentation.

`load_input(path, spec)` / `preprocess(image, spec)` turn a file or a decoded RGB image into the
model's input: a uint8 tensor (3, size, size), short side resized to `size` then centre-cropped (or
the whole image padded square, and optionally colour-balanced: InputSpec, from the checkpoint).
Validation, evaluation, prediction, serving and ONNX export all call it. Normalisation (ImageNet
mean/std) is not done here but inside the model (src/core/model.py), so that uint8 crosses the
bus (4x less than float32), the GPU does the arithmetic, and an exported model carries it along.

`augment_batch` adds training augmentation to a whole batch at once, on whatever device the batch
is on, so the data workers only decode and crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.data.images import decode_bytes, decode_image, resize_short_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


FITS = ("crop", "pad")  # INPUT_FIT: centre crop of the short side, or the whole image padded square


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input; saved in the checkpoint and ONNX metadata, so that
    training, evaluation, prediction, serving and export all prepare it the same way."""

    size: int
    fit: str = "crop"  # "crop": short side to size, centre crop; "pad": long side to size, black borders
    colour_constancy: bool = False  # Shades of Gray white balance of each image

    @classmethod
    def of(cls, settings: dict) -> InputSpec:
        """From a checkpoint or export's settings (older ones have neither key: crop, no constancy)."""
        return cls(
            settings["img_size"], settings.get("input_fit", "crop"), bool(settings.get("colour_constancy"))
        )


def as_spec(spec: int | InputSpec) -> InputSpec:
    return spec if isinstance(spec, InputSpec) else InputSpec(int(spec))


def shades_of_gray(image: np.ndarray, power: int = 6) -> np.ndarray:
    """Colour constancy (Finlayson and Trezzi 2004), as the ISIC 2018/2019 winners applied it: the
    illuminant is each channel's Minkowski p-norm mean, and each channel is scaled so that the
    illuminant becomes neutral grey. Removes the colour cast of a dermatoscope's light."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    illuminant = np.power(np.mean(np.power(pixels, power), axis=0), 1.0 / power)
    illuminant = illuminant / max(float(np.linalg.norm(illuminant)), 1e-6)
    gains = 1.0 / np.maximum(illuminant * np.sqrt(3.0), 1e-6)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def preprocess(image: np.ndarray, spec: int | InputSpec) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 tensor (3, size, size): short side to `size` and a centre crop
    (or, with fit="pad", long side to `size` and black borders), optionally colour-balanced."""
    spec = as_spec(spec)
    size = spec.size
    if spec.fit == "pad":
        h, w = image.shape[:2]
        scale = size / max(h, w)
        image = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    else:
        image = resize_short_side(image, size)
    if spec.colour_constancy:
        image = shades_of_gray(image)
    h, w = image.shape[:2]
    if spec.fit == "pad":
        canvas = np.zeros((size, size, 3), np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        canvas[top : top + h, left : left + w] = image
        return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(image[top : top + size, left : left + size])
    return torch.from_numpy(crop).permute(2, 0, 1).contiguous()


def load_input(path, spec: int | InputSpec) -> torch.Tensor:
    """Decode a file (reduced JPEG decoding) and preprocess it."""
    return preprocess(decode_image(path, min_short_side=as_spec(spec).size), spec)


def load_input_bytes(data: bytes, spec: int | InputSpec, name: str = "upload") -> torch.Tensor:
    return preprocess(decode_bytes(data, min_short_side=as_spec(spec).size, name=name), spec)


# Why each augmentation is safe for dermoscopy:
# - flips and 90-degree rotations: a lesion has no canonical orientation on the skin, and the
#   dermatoscope is held at any angle; diagnosis (ABCD, pattern analysis) is rotation invariant.
# - free rotation (reflection padding): same reason; reflection avoids black corners that a
#   model could learn as a cue (real dermoscopy vignettes are circular, not triangular).
# - mild scale (0.9-1.1) and shift (5%): zoom and framing vary between devices; kept mild because
#   lesion diameter itself is a melanoma cue (the D of ABCD).
# - mild brightness/contrast (+-10%): illumination differs between dermatoscopes.
# - small saturation (+-10%) and hue (+-5 degrees) changes: camera white balance drifts a little.
#   Nothing larger: colour (blue-grey veil, several browns, black) is a key melanoma cue, so no
#   grayscale, no strong hue shift, no colour inversion.
MAX_ROTATION_DEG = 45.0  # with the 90-degree rotations this covers every angle
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.05
BRIGHTNESS = CONTRAST = SATURATION = 0.1
MAX_HUE_DEG = 5.0

# RGB <-> YIQ: a hue change is a rotation of the I/Q chroma plane, luminance untouched.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _uniform(n: int, low: float, high: float, gen, device) -> torch.Tensor:
    return (
        torch.rand(n, generator=gen, device=gen.device if gen is not None else device).to(device)
        * (high - low)
        + low
    )


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random medical-safe augmentation of a float batch (B, 3, S, S) in 0..255; returns the same shape."""
    x = _flip_and_rotate90(x, generator)
    x = _affine(x, generator)
    return _colour(x, generator).clamp_(0.0, 255.0)


def _flip_and_rotate90(x: torch.Tensor, gen) -> torch.Tensor:
    n = x.shape[0]
    coins = _uniform(3 * n, 0.0, 1.0, gen, x.device).view(3, n, 1, 1, 1) < 0.5
    x = torch.where(coins[0], x.flip(3), x)
    x = torch.where(coins[1], x.flip(2), x)
    # transpose + the flips above reach all 8 symmetries of the square (the dihedral group).
    return torch.where(coins[2], x.transpose(2, 3), x)


def _affine(x: torch.Tensor, gen) -> torch.Tensor:
    n, device = x.shape[0], x.device
    angle = _uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, gen, device) * (math.pi / 180.0)
    scale = _uniform(n, *SCALE_RANGE, gen, device)
    shift = _uniform(2 * n, -MAX_SHIFT, MAX_SHIFT, gen, device).view(n, 2) * 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _colour(x: torch.Tensor, gen) -> torch.Tensor:
    n, device = x.shape[0], x.device
    brightness = _uniform(n, 1 - BRIGHTNESS, 1 + BRIGHTNESS, gen, device).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - CONTRAST, 1 + CONTRAST, gen, device).view(n, 1, 1, 1)
    saturation = _uniform(n, 1 - SATURATION, 1 + SATURATION, gen, device)
    hue = _uniform(n, -MAX_HUE_DEG, MAX_HUE_DEG, gen, device) * (math.pi / 180.0)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    # Saturation scales and hue rotates the chroma (I, Q) plane: one 3x3 matrix per image.
    cos, sin = torch.cos(hue) * saturation, torch.sin(hue) * saturation
    ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)
    chroma = torch.stack(
        [
            torch.stack([ones, zeros, zeros], 1),
            torch.stack([zeros, cos, -sin], 1),
            torch.stack([zeros, sin, cos], 1),
        ],
        1,
    )
    matrix = _YIQ2RGB.to(device) @ chroma @ _RGB2YIQ.to(device)
    return torch.einsum("nij,njhw->nihw", matrix, x)


def dihedral_views(x):
    """The 8 flips/transposes of a square (N, C, S, S) batch, torch or numpy, for test-time
    augmentation (lesions have no 'up'). Numpy stays numpy, so an ONNX Runtime caller never wakes
    PyTorch's thread pool, whose spinning threads would compete with ONNX Runtime's for the cores."""
    if isinstance(x, np.ndarray):

        def flips(t):
            return [t, t[..., ::-1], t[..., ::-1, :], t[..., ::-1, ::-1]]

        return flips(x) + flips(x.transpose(0, 1, 3, 2))
    views = []
    for t in (x, x.transpose(2, 3)):
        views += [t, t.flip(3), t.flip(2), t.flip(2, 3)]
    return views
