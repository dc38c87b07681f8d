# CPU inference service: FastAPI + uvicorn, PyTorch CPU wheels, non-root, health-checked.
#   docker build -t melanoma-api .
#   docker run -p 8000:8000 -v "$PWD/checkpoints:/models:ro" \
#       -e MODEL_PATH=/models/best.pth melanoma-api
# MODEL_PATH may name an exported .onnx model instead (src/inference/export.py); add
# -e CONTEXT_MODEL=/models/context/context_model.json for the context stage (POST /triage).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MODEL_PATH=/models/model.pth THREADS=4
WORKDIR /app

# LightGBM (the context stage) links against the system's OpenMP runtime, which slim images lack.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

# CPU-only torch/torchvision first (the default PyPI wheels bring several GB of CUDA libraries).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
RUN pip install --no-deps .
RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
# serve.py runs uvicorn with the service's limits (docs/serving.md): connections, keep-alive, header
# and body timeouts, bounded logs.
CMD ["python", "src/inference/serve.py", "--host", "0.0.0.0", "--port", "8000"]
