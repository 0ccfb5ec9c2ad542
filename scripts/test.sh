#!/usr/bin/env bash
# Installs what the tests need (first run only), then lints, type-checks and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy api worker models cli
exec .venv/bin/python -m pytest "$@"
