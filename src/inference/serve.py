"""HTTP service for the melanoma classifier (FastAPI, run by uvicorn).

    MODEL_PATH=checkpoints/best_model_epochN.pth uvicorn src.inference.serve:app --port 8000

MODEL_PATH may also name an exported .onnx model (fp32 or int8). Settings from the environment:
MAX_UPLOAD_MB (default 20), MAX_PIXELS (default 50,000,000; ISIC originals are at most 24 MP),
THREADS (CPU threads for inference, default min(4, cores)).

The model is loaded once at start-up. Requests are served from a thread pool and inference is
serialised by one lock, so concurrent requests are safe and CPU use stays bounded. Bad input gets
a 4xx with a JSON {"detail": ...} message; it never kills the worker.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from src.data.images import ImageDecodeError, image_size
from src.data.transforms import load_input_bytes
from src.inference.predictor import Predictor, default_threads
from src.training.checkpoint import CheckpointError

MAX_UPLOAD_BYTES = int(float(os.environ.get("MAX_UPLOAD_MB", "20")) * 1024 * 1024)
MAX_PIXELS = int(os.environ.get("MAX_PIXELS", "50000000"))
ACCEPTED_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
DESCRIPTION = """Melanoma probability for a dermoscopy image (ResNet50 trained on ISIC data).

**Not a medical device.** Research software: its output is not a diagnosis and must not be used
to make clinical decisions.

`POST /predict` takes an image upload (JPEG or PNG, field `file`) and returns the calibrated
melanoma probability, the label at the model's saved threshold, the threshold and the model
version. `POST /explain` returns a Grad-CAM overlay (PNG) of what the model looked at."""

STATE: dict = {}


def load_predictor() -> str | None:
    """Load MODEL_PATH into STATE; returns why it cannot be served, or None."""
    path = os.environ.get("MODEL_PATH")
    if not path:
        return "set MODEL_PATH to a checkpoint (.pth) or an exported model (.onnx)"
    try:
        STATE["predictor"] = Predictor(path, threads=default_threads())
    except CheckpointError as e:
        return str(e)
    STATE["lock"] = threading.Lock()
    return None


@asynccontextmanager
async def lifespan(_: FastAPI):
    yield
    STATE.clear()


api = FastAPI(title="Melanoma classifier", description=DESCRIPTION, version="1.0", lifespan=lifespan)


async def app(scope, receive, send):
    """The ASGI entry point. A model that cannot be loaded ends start-up with one line and a
    non-zero exit, instead of the traceback Starlette prints for an exception in a lifespan."""
    if scope["type"] == "lifespan" and "predictor" not in STATE:
        error = load_predictor()
        if error:
            await receive()  # lifespan.startup
            print(f"error: {error}", file=sys.stderr, flush=True)
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
    await api(scope, receive, send)


@api.middleware("http")
async def limit_upload_size(request: Request, call_next):
    """Refuse oversized bodies from their Content-Length, before reading them."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
        return JSONResponse({"detail": f"upload too large: {int(length):,} bytes, limit {MAX_UPLOAD_BYTES:,}"}, 413)
    return await call_next(request)


def read_image_upload(file: UploadFile) -> bytes:
    """The upload's bytes, checked for type, size and pixel count before any decoding."""
    if file.content_type and file.content_type.split(";")[0].strip().lower() not in ACCEPTED_TYPES:
        raise HTTPException(415, f"unsupported content type {file.content_type!r}; upload a JPEG or PNG image")
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"upload too large: limit {MAX_UPLOAD_BYTES:,} bytes")
    if not data:
        raise HTTPException(400, "empty upload (0 bytes)")
    size = image_size(data)
    if size and size[0] * size[1] > MAX_PIXELS:
        raise HTTPException(413, f"image is {size[0]}x{size[1]} pixels, above the limit of {MAX_PIXELS:,}")
    return data


def decode_error(e: ImageDecodeError) -> HTTPException:
    return HTTPException(400, str(e).split(": ", 1)[-1])


@api.get("/health")
def health():
    return {"status": "ok", "model_loaded": "predictor" in STATE}


@api.get("/model")
def model_info():
    return STATE["predictor"].info()


@api.post("/predict")
def predict(file: UploadFile = File(..., description="JPEG or PNG image"), tta: bool = False):
    data = read_image_upload(file)
    predictor = STATE["predictor"]
    try:
        with STATE["lock"]:
            result = predictor.predict_bytes(data, tta=tta, name=file.filename or "upload")
    except ImageDecodeError as e:
        raise decode_error(e) from None
    return {**result, "model_version": predictor.version, "note": "not a medical device"}


@api.post("/explain", responses={200: {"content": {"image/png": {}}}})
def explain(file: UploadFile = File(..., description="JPEG or PNG image")):
    from src.inference.gradcam import grad_cam, overlay_png
    data = read_image_upload(file)
    predictor = STATE["predictor"]
    if predictor.kind != "pytorch":
        raise HTTPException(409, "Grad-CAM needs a PyTorch checkpoint (.pth); this service runs an ONNX model")
    try:
        image = load_input_bytes(data, predictor.img_size, file.filename or "upload")
    except ImageDecodeError as e:
        raise decode_error(e) from None
    with STATE["lock"]:
        png = overlay_png(image, grad_cam(predictor.model, image))
    return Response(png, media_type="image/png")
