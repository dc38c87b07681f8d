"""Grad-CAM on the last convolutional block: where in the image the melanoma logit came from."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.core.model import MelanomaNet
from src.errors import ProjectError

NO_CAM = "Grad-CAM needs a convolutional backbone (ResNet, EfficientNet, ConvNeXt); this model is a ViT"


class GradCamUnavailable(ProjectError):
    pass


def grad_cam(model: MelanomaNet, image: torch.Tensor) -> np.ndarray:
    """(3, S, S) uint8 image -> (S, S) float map in [0, 1] (Selvaraju et al., 2017).

    Not thread-safe (it hooks the shared model): callers serialise it.
    """
    store = {}
    device = next(model.parameters()).device
    if model.cam_layer() is None:
        raise GradCamUnavailable(NO_CAM)
    handle = model.cam_layer().register_forward_hook(lambda module, inputs, output: store.update(a=output))
    try:
        with torch.enable_grad():
            logit = model(image[None].to(device))
            # The gradient of the logit with respect to the activation only: no hooks on tensors (a
            # hook closure that holds the activation leaked two tensors per call) and no parameter
            # gradients left on the shared model.
            (gradient,) = torch.autograd.grad(logit.sum(), store["a"])
    finally:
        handle.remove()
    activation = store.pop("a").detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(image: torch.Tensor, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (S, S, 3): the model's input with the heat map blended over it."""
    rgb = image.permute(1, 2, 0).cpu().numpy()
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8((1 - alpha) * rgb + alpha * heat)


def overlay_png(image: torch.Tensor, cam: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(image, cam), cv2.COLOR_RGB2BGR))
    return png.tobytes()
