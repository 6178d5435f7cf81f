# One image for the API and the workers. TORCH_INDEX picks the torch wheel: the CPU build (default,
# API / CPU workers) or a CUDA build for GPU workers (see docker-compose.yml).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PRUNESCOPE_DATA_DIR=/data HF_HOME=/data/hf-cache

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY worker ./worker
COPY frontend ./frontend
RUN pip install . && useradd --create-home --uid 1000 prunescope && mkdir -p /data && chown prunescope /data
USER prunescope
VOLUME ["/data"]
EXPOSE 8000
# `prunescope api` runs the database migrations at start-up.
CMD ["prunescope", "api"]
