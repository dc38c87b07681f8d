"""HTTP service for the melanoma classifier (FastAPI, run by uvicorn).

    MODEL_PATH=checkpoints/best.pth python src/inference/serve.py [--host H] [--port 8000]

MODEL_PATH may also name an exported .onnx model (fp32 or int8). The command above runs uvicorn
with the service's connection limits (docs/serving.md); `uvicorn src.inference.serve:app` also
works, and then needs the flags listed there. Settings from the environment: MAX_UPLOAD_MB
(default 20), MAX_PIXELS (default 50,000,000; ISIC originals are at most 24 MP), THREADS (CPU
threads for inference, default min(4, cores)), HEADER_TIMEOUT_S (10) and BODY_TIMEOUT_S (30).
CONTEXT_MODEL (optional) names a context stage (context_model.json from src/training/context.py):
`POST /triage` and `/predict` then weigh age, sex, site and the patient's other lesions too.

`GET /` is a page for people: drop images, see the risk, the decision and Grad-CAM, and the model
card with a link to the evaluation report (`GET /report/...`, read-only, the checkpoint's eval/
folder only). The model is loaded once at start-up; one that cannot be loaded stops start-up.
Requests are served from a thread pool and decoding and inference are serialised by one lock, so
concurrent requests are safe and memory stays bounded. Bad input gets a 4xx with a JSON
{"detail": ...} message; it never kills the worker. Every answer carries security headers (a
content-security policy that pins the page's own script and style); API_DOCS=1 turns on Swagger UI
at /docs, which loads from a public CDN.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from src.core.context_model import ContextModel, few_lesions_note
from src.core.decision import ABOVE, BELOW, REFER, answer
from src.data.atomic import read_regular_file
from src.data.images import MAX_PIXELS, ImageDecodeError, ImageTooLarge, check_header
from src.data.metadata import COLUMNS, age_in_years
from src.data.patient_context import ugly_duckling_rank
from src.errors import ProjectError
from src.inference.predictor import Scorer, default_threads, load_scorer
from src.inference.report_html import STYLE as REPORT_STYLE
from src.inference.report_html import report_page

MAX_UPLOAD_BYTES = int(float(os.environ.get("MAX_UPLOAD_MB", "20")) * 1024 * 1024)
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file itself
DECISION_ORDER = (ABOVE, REFER, BELOW)  # /triage lists lesions in this order, then by probability
MAX_TRIAGE_FILES = 32  # lesions of one patient in one /triage request (the whole body obeys MAX_UPLOAD_MB)
SEXES = ("female", "male")
BODY_TIMEOUT_S = float(os.environ.get("BODY_TIMEOUT_S", "30"))  # the whole body must arrive within this
HEADER_TIMEOUT_S = float(os.environ.get("HEADER_TIMEOUT_S", "10"))  # request headers must arrive within this
LIMIT_CONCURRENCY = 32  # connections at once; more get 503 instead of exhausting file descriptors
KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this
PAGE = Path(__file__).with_name("page.html")
REPORT_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
}
ACCEPTED_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
DESCRIPTION = """Melanoma probability for a dermoscopy image (ResNet50 trained on ISIC data).

**Not a medical device.** Research software: its output is not a diagnosis and must not be used
to make clinical decisions.

`POST /predict` takes an image upload (JPEG or PNG, field `file`) and returns the calibrated
melanoma probability, the label at the model's saved threshold, the threshold and the model
version; optional form fields `age`, `sex` and `site` feed the context stage when one is loaded.
`POST /triage` takes several images of one patient (fields `files`) with optional per-image
metadata (field `metadata`: a JSON list of {"age", "sex", "site"}, one per file) and returns every
lesion's risk and its "ugly duckling" rank within the patient, the lesions above the threshold
first. `POST /explain` returns a Grad-CAM overlay (PNG) of what the model looked at."""

MAX_REPORT_JSON_BYTES = 1024 * 1024


def content_security_policy(page: str) -> str:
    """The page may run only its own inline script and style (pinned by hash; the report page's style
    too), show images it made itself (blob:) or the report's plots, talk only to this origin, and
    never be framed."""

    def pinned(text: str) -> str:
        return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"

    def inline(tag: str) -> str:
        return re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)

    return (
        f"default-src 'none'; script-src {pinned(inline('script'))}; "
        f"style-src {pinned(inline('style'))} {pinned(REPORT_STYLE)}; "
        "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


SECURITY_HEADERS = [
    (b"content-security-policy", content_security_policy(PAGE.read_text(encoding="utf-8")).encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def clipped(text: str, limit: int = 100) -> str:
    """Client text as an answer may echo it: cut to `limit` characters, and always encodable (a lone
    surrogate or a control character is written as an escape)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value, limit: int = 60) -> str:
    """A client's value in a message, quoted like repr() and clipped."""
    if isinstance(value, str):
        return f"'{clipped(value, limit)}'"
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = type(value).__name__
    return clipped(text, limit)


class StartupError(ProjectError):
    """The model (or context model) named in the environment cannot be served."""


def load_models() -> tuple[Scorer, ContextModel | None]:
    path = os.environ.get("MODEL_PATH")
    if not path:
        raise StartupError(
            "set MODEL_PATH to a checkpoint (.pth), an exported model (.onnx) or the folder of oof.py"
        )
    try:
        predictor = load_scorer(path, threads=default_threads())
        context = ContextModel.load(os.environ["CONTEXT_MODEL"]) if os.environ.get("CONTEXT_MODEL") else None
    except Exception as e:  # any failure must stop start-up: never a service without a model
        raise StartupError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if context is not None and not context.uses_image_score:
        raise StartupError(
            f"CONTEXT_MODEL {os.environ['CONTEXT_MODEL']} was trained without image scores (context.py "
            f"without --oof, or its fused stage scored lower): it would ignore the images; "
            f"serve a fused model"
        )
    return predictor, context


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The models are loaded once, before the first request; one that cannot be loaded stops start-up."""
    app.state.predictor, app.state.context = load_models()
    app.state.lock = threading.Lock()  # decoding and inference, one request at a time
    yield
    app.state.predictor = app.state.context = None


class StartupFailureLine(logging.Filter):
    """uvicorn logs a failed start-up with the lifespan's traceback; a StartupError is the user's
    problem (a missing or refused model file), so it is reported as its one `error:` line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().strip().splitlines() or [""]
        name, _, message = lines[-1].partition(": ")
        if lines[0].startswith("Traceback") and name.rsplit(".", 1)[-1] == StartupError.__name__:
            print(f"error: {message}", file=sys.stderr, flush=True)  # as every command reports one
            return False
        return True


logging.getLogger("uvicorn.error").addFilter(StartupFailureLine())  # for `uvicorn src.inference.serve:app`


# Swagger UI (/docs) loads its scripts from a public CDN; the service is meant for closed networks,
# so it is off unless API_DOCS=1. The OpenAPI schema itself (/openapi.json) is always served.
DOCS = os.environ.get("API_DOCS") == "1"
api = FastAPI(
    title="Melanoma classifier",
    description=DESCRIPTION,
    version="1.0",
    lifespan=lifespan,
    docs_url="/docs" if DOCS else None,
    redoc_url=None,
)


class BodyTooLarge(Exception):
    pass


class UploadLimits:
    """ASGI middleware: every HTTP request under the body limits, every answer with SECURITY_HEADERS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = with_security_headers(send, scope.get("path", ""))
        await limited_request(self.app, scope, receive, send)


api.add_middleware(UploadLimits)
app = api  # what `uvicorn src.inference.serve:app` serves


def with_security_headers(send, path: str):
    """Every answer carries SECURITY_HEADERS (Swagger UI, when API_DOCS=1, needs its CDN)."""
    headers = SECURITY_HEADERS[1:] if DOCS and path == "/docs" else SECURITY_HEADERS

    async def send_with_headers(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return send_with_headers


async def limited_request(app, scope, receive, send):
    """Count body bytes as they arrive (chunked bodies have no Content-Length to trust) and give the
    whole body BODY_TIMEOUT_S; past either limit the request ends with a 413 or 408 at once,
    without spooling the rest to disk."""
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD:
        return await send_json(
            send, 413, f"upload too large: {int(length):,} bytes, limit {MAX_UPLOAD_BYTES:,}"
        )
    state = {"bytes": 0, "refused": None, "started": False}
    deadline = time.monotonic() + BODY_TIMEOUT_S

    async def counted_receive():
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            state["refused"] = (408, f"request body not received within {BODY_TIMEOUT_S:g} s")
            raise BodyTooLarge from None
        state["bytes"] += len(message.get("body", b""))
        if state["bytes"] > MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD:
            state["refused"] = (413, f"upload too large: limit {MAX_UPLOAD_BYTES:,} bytes")
            raise BodyTooLarge
        return message

    async def guarded_send(message):
        if state["refused"]:
            return  # the app's own reaction to the aborted body is replaced by ours
        state["started"] |= message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, counted_receive, guarded_send)
    except BodyTooLarge:
        pass
    if state["refused"] and not state["started"]:
        await send_json(send, *state["refused"])


async def send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def read_image_upload(file: UploadFile) -> bytes:
    """The upload's bytes, checked for type, size, pixel count and aspect ratio before any decoding."""
    if file.content_type and file.content_type.split(";")[0].strip().lower() not in ACCEPTED_TYPES:
        raise HTTPException(
            415, f"unsupported content type {shown(file.content_type)}; upload a JPEG or PNG image"
        )
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"upload too large: limit {MAX_UPLOAD_BYTES:,} bytes")
    if not data:
        raise HTTPException(400, "empty upload (0 bytes)")
    try:
        check_header(data, "upload", MAX_PIXELS)
    except ImageDecodeError as e:
        raise decode_error(e) from None
    return data


def decode_error(e: ImageDecodeError) -> HTTPException:
    return HTTPException(413 if isinstance(e, ImageTooLarge) else 400, str(e).split(": ", 1)[-1])


@api.get("/health")
def health():
    # Never healthy without a model (Docker's health check reads this).
    if getattr(api.state, "predictor", None) is None:
        return JSONResponse({"status": "no model loaded", "model_loaded": False}, 503)
    return {"status": "ok", "model_loaded": True}


@api.get("/", response_class=HTMLResponse, include_in_schema=False)
def page():
    """One self-contained page (no CDN, no build step): upload images, see the risk, the decision
    at the saved threshold, Grad-CAM, and the model card."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@api.get("/model")
def model_info():
    predictor = api.state.predictor
    info = predictor.info()
    report = report_folder(predictor) / "report.json"
    if report.is_file():  # the evaluation of the run's validation split, beside the checkpoint
        try:
            info["evaluation"] = evaluation_summary(
                json.loads(read_regular_file(report, MAX_REPORT_JSON_BYTES))
            )
            info["report"] = "/report"
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
            info["evaluation"] = None  # the card still shows the model; the report cannot be read
    if api.state.context is not None:
        context = api.state.context
        info["context_stage"] = {**(context.info or {}), "threshold": context.threshold}
    return info


def evaluation_summary(r: dict) -> dict:
    summary = {
        "roc_auc": r["metrics"]["roc_auc"],
        "roc_auc_ci": r["ci95"].get("roc_auc"),
        "pauc": r["metrics"]["pauc_tpr80"],
        "pauc_ci": r["ci95"].get("pauc_tpr80"),
        "set": r["set"]["description"],
        "images": r["set"]["images"],
    }
    json.dumps(summary, allow_nan=False, ensure_ascii=False).encode()  # ValueError: not answerable
    return summary


def report_folder(predictor) -> Path:
    """eval/ beside the checkpoint; an ensemble's inside its folder (never another model's)."""
    return predictor.path / "eval" if predictor.path.is_dir() else predictor.path.parent / "eval"


@api.get("/report", response_class=HTMLResponse, include_in_schema=False)
def report_html():
    """The evaluation report as a page, its plots inline; 404 when the model has none."""
    path = report_path("report.md")
    try:
        text = read_regular_file(path, MAX_REPORT_JSON_BYTES) if path else None
    except OSError:
        text = None
    if text is None:
        raise HTTPException(404, "this model has no evaluation report (run evaluate.py on it)")
    return HTMLResponse(report_page(text.decode("utf-8", "replace")))


@api.get("/report/{name:path}", include_in_schema=False)
def report_file(name: str):
    """The evaluation report's files beside the checkpoint, read-only; a 404 for anything else."""
    path = report_path(name)
    if path is None:
        raise HTTPException(404, "no such report file")
    return FileResponse(path, media_type=REPORT_TYPES[path.suffix.lower()])


def report_path(name: str) -> Path | None:
    """The file `name` inside the checkpoint's eval/ folder, or None: nothing outside that folder,
    no other file type, and no name that cannot lead to one of its files (a NUL byte, a name too
    long for the file system, a symlink loop)."""
    folder = report_folder(api.state.predictor).resolve()
    try:
        path = (folder / name).resolve()
        found = path.is_relative_to(folder) and path.suffix.lower() in REPORT_TYPES and path.is_file()
    except (OSError, ValueError, RuntimeError):
        found = False
    return path if found else None


@api.post("/predict")
def predict(
    file: UploadFile = File(..., description="JPEG or PNG image"),
    tta: bool | None = None,
    age: str | None = Form(None, description="approximate age in years (optional)"),
    sex: str | None = Form(None, description="female or male (optional)"),
    site: str | None = Form(None, description="anatomic site, e.g. 'posterior torso' (optional)"),
):
    name = clipped(file.filename) if file.filename else "upload"
    meta = parse_metadata({"age": age, "sex": sex, "site": site}, name)
    views = checked_views(tta)
    data = read_image_upload(file)
    predictor = api.state.predictor
    try:
        with api.state.lock:
            members, reason = predictor.score_bytes(data, tta=views)
    except ImageDecodeError as e:
        raise decode_error(e) from None
    result = score_patient([members], [meta], [reason])[0]
    del result["ugly_duckling_rank"]  # one image: no other lesion of the patient to compare with
    return {**result, **about_the_model(predictor)}


def checked_views(tta: bool | None) -> bool:
    """TTA as the threshold was fitted; the other kind of logits would move it (409, with the reason)."""
    try:
        return api.state.predictor.views(tta)
    except ProjectError as e:
        raise HTTPException(409, str(e)) from None


def about_the_model(predictor) -> dict:
    return {
        "synthetic_training_data": predictor.synthetic,
        "model_version": predictor.version,
        "note": "not a medical device",
    }


@api.post("/triage")
def triage(
    files: list[UploadFile] = File(..., description="JPEG or PNG images of one patient's lesions"),
    metadata: str | None = Form(None, description='JSON list, one {"age", "sex", "site"} per file'),
    tta: bool | None = None,
):
    """All lesions of one patient, scored together: each one's risk, whether it is above the
    threshold, and its "ugly duckling" rank (1 = the image score that stands out most)."""
    if len(files) > MAX_TRIAGE_FILES:
        raise HTTPException(413, f"{len(files)} files; at most {MAX_TRIAGE_FILES} lesions per request")
    names = [clipped(f.filename) if f.filename else f"file {i + 1}" for i, f in enumerate(files)]
    metas = parse_metadata_list(metadata, names)
    views = checked_views(tta)
    predictor, logits, reasons = api.state.predictor, [], []
    for file, name in zip(files, names, strict=True):
        try:
            data = read_image_upload(file)
            with api.state.lock:
                members, reason = predictor.score_bytes(data, tta=views)
            logits.append(members)
            reasons.append(reason)
        except ImageDecodeError as e:
            raise HTTPException(decode_error(e).status_code, f"{name}: {decode_error(e).detail}") from None
        except HTTPException as e:  # which of the patient's files was refused
            raise HTTPException(e.status_code, f"{name}: {e.detail}") from None
    lesions = score_patient(logits, metas, reasons)
    for i, (lesion, name) in enumerate(zip(lesions, names, strict=True)):
        lesion["file"], lesion["index"] = name, i  # index: its place in the request
    lesions.sort(key=lambda r: (DECISION_ORDER.index(r["decision"]), -r["probability"]))
    return {"lesions": lesions, "context_stage": api.state.context is not None, **about_the_model(predictor)}


def parse_metadata(raw: dict, name: str) -> dict:
    """age, sex and site of one image, checked: a bad value is a 422 naming the file and the field;
    an empty or absent one is missing (the trees handle missing values). Ages follow the one rule
    of every path (src/data/metadata.py: a number of years in 0-120)."""
    if not isinstance(raw, dict) or set(raw) - {"age", "sex", "site"}:
        raise HTTPException(422, f"{name}: metadata must be an object with only age, sex and site")
    try:
        age = age_in_years(raw.get("age"))
    except ValueError as e:
        raise HTTPException(422, f"{name}: age {e}, not {shown(raw.get('age'))}") from None
    sex, site = raw.get("sex"), raw.get("site")
    sex = sex.strip().lower() if isinstance(sex, str) else sex
    if sex not in (None, "", *SEXES):
        raise HTTPException(422, f"{name}: sex must be one of {SEXES} or empty, not {shown(sex)}")
    if not isinstance(site, (str, type(None))) or len(site or "") > 100 or not (site or "").isprintable():
        raise HTTPException(422, f"{name}: site must be a short text such as 'posterior torso'")
    return {"age": age, "sex": sex or "", "site": (site or "").strip().lower()}


def parse_metadata_list(metadata: str | None, names: list[str]) -> list[dict]:
    if not metadata:
        return [parse_metadata({}, name) for name in names]
    try:
        items = json.loads(metadata)
    except (ValueError, RecursionError):  # not JSON, an integer of thousands of digits, or nested too deep
        raise HTTPException(
            422, "metadata must be a JSON list, one {age, sex, site} object per file"
        ) from None
    if not isinstance(items, list) or len(items) != len(names):
        raise HTTPException(
            422, f"metadata must be a JSON list with one object per file ({len(names)} files)"
        )
    return [parse_metadata(item, name) for item, name in zip(items, names, strict=True)]


def score_patient(member_logits: list[np.ndarray], metas: list[dict], reasons: list) -> list[dict]:
    """One answer per lesion of one patient (src/core/decision.py) from its models' logits: the
    context stage's when loaded (metadata and the patient's other lesions, fed the models' mean
    logit), else the image model's; with the image model's own probability beside it, the
    ugly-duckling rank, the spread of its models' and TTA views' logits as the uncertainty, and
    with a quality gate whether the image can be assessed (when not, the page shows the reason
    instead of a risk)."""
    predictor, members = api.state.predictor, np.asarray(member_logits, dtype=np.float64)
    logits = members.mean(axis=1)
    image_p = predictor.probabilities(logits)
    rank = ugly_duckling_rank(logits, np.zeros(len(logits)))  # one request, one patient
    context = api.state.context
    if context is None:
        p, threshold, stage = image_p, predictor.threshold, "image"
    else:
        table = pd.DataFrame({c: "" for c in COLUMNS}, index=range(len(metas)))
        table["image_name"] = [f"lesion{i}" for i in range(len(metas))]
        table["patient_id"] = "patient"  # one request, one patient
        table["age_approx"] = [m["age"] for m in metas]
        table["sex"], table["anatom_site"] = [m["sex"] for m in metas], [m["site"] for m in metas]
        p, threshold, stage = context.probabilities(table, logits), context.threshold, "context"
    note = few_lesions_note(len(logits)) if context is not None else ""
    spread = members.std(axis=1) if members.shape[1] > 1 else None  # models x views
    unsure = predictor.uncertain(p, spread) if stage == "image" else np.zeros(len(p), bool)
    return [
        {
            **answer(p[i], threshold, stage, not reasons[i], bool(unsure[i])),
            "image_probability": float(image_p[i]),
            "ugly_duckling_rank": int(rank[i]),
            **(
                {"unknown_site_treated_as_missing": metas[i]["site"]}
                if context and metas[i]["site"] and metas[i]["site"] not in context.sites
                else {}
            ),
            **({"context_note": note} if note else {}),
            **({"uncertainty": float(spread[i])} if spread is not None else {}),
            **({"assessable": not reasons[i], "reason": reasons[i]} if reasons[i] is not None else {}),
        }
        for i in range(len(logits))
    ]


@api.post("/explain", responses={200: {"content": {"image/png": {}}}})
def explain(file: UploadFile = File(..., description="JPEG or PNG image")):
    from src.data.transforms import load_input_bytes
    from src.inference.gradcam import NO_CAM, grad_cam, overlay_png

    data = read_image_upload(file)
    predictor = api.state.predictor
    if predictor.kind != "pytorch":
        raise HTTPException(
            409, "Grad-CAM needs a PyTorch checkpoint (.pth); this service runs an ONNX model"
        )
    if predictor.model.cam_layer() is None:
        raise HTTPException(409, NO_CAM)
    try:
        with api.state.lock:  # decoding too: eight concurrent 49 MP decodes would take 2 GB at once
            image = load_input_bytes(data, predictor.input, "upload")
            png = overlay_png(image, grad_cam(predictor.model, image))
    except ImageDecodeError as e:
        raise decode_error(e) from None
    return Response(png, media_type="image/png")


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for request headers: a client that opens a
    connection (or finishes a request) and then trickles headers is disconnected after
    HEADER_TIMEOUT_S, so slow clients cannot hold connections and file descriptors forever."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_overdue)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._header_timer.cancel()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_overdue)

    def connection_lost(self, exc) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request in progress
            self.transport.close()


class RateLimitedLog(logging.Filter):
    """At most `per_minute` records a minute per logger, then one line saying how many were
    dropped: a flood of bad connections must not fill the disk with log lines."""

    def __init__(self, per_minute: int = 600):
        super().__init__()
        self.per_minute, self.window, self.count, self.dropped = per_minute, 0, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        window = int(time.monotonic() // 60)
        if window != self.window:
            if self.dropped:
                record.msg = f"({self.dropped} log lines dropped in the last minute) {record.msg}"
            self.window, self.count, self.dropped = window, 0, 0
        self.count += 1
        if self.count > self.per_minute:
            self.dropped += 1
            return False
        return True


def main(argv=None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(
        description="Serve the melanoma classifier over HTTP (MODEL_PATH names the model)."
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    config = uvicorn.Config(
        api,
        host=args.host,
        port=args.port,
        http=HeaderTimeoutProtocol,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=16 * 1024,
    )
    for name in ("uvicorn.error", "uvicorn.access", "asyncio"):
        logging.getLogger(name).addFilter(RateLimitedLog())
    logging.getLogger("uvicorn.error").addFilter(StartupFailureLine())  # uvicorn.Config reset it
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
