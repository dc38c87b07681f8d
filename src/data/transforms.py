"""The one preprocessing path, and medical-safe training augmentation.

`load_input(path, size)` / `preprocess(image, size)` turn a file or a decoded RGB image into the
model's input: a uint8 tensor (3, size, size), short side resized to `size` then centre-cropped.
Validation, evaluation, prediction, serving and ONNX export all call it. Normalisation (ImageNet
mean/std) is not done here but inside the model (src/core/model.py), so that uint8 crosses the
bus (4x less than float32), the GPU does the arithmetic, and an exported model carries it along.

`augment_batch` adds training augmentation to a whole batch at once, on whatever device the batch
is on, so the data workers only decode and crop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from src.data.images import decode_bytes, decode_image, resize_short_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 tensor (3, size, size): short side to `size`, centre crop."""
    image = resize_short_side(image, size)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(image[top : top + size, left : left + size])
    return torch.from_numpy(crop).permute(2, 0, 1).contiguous()


def load_input(path, size: int) -> torch.Tensor:
    """Decode a file (reduced JPEG decoding) and preprocess it."""
    return preprocess(decode_image(path, min_short_side=size), size)


def load_input_bytes(data: bytes, size: int, name: str = "upload") -> torch.Tensor:
    return preprocess(decode_bytes(data, min_short_side=size, name=name), size)


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
