#!/usr/bin/env bash
# Sets up (first run only) and runs the whole service: embedded Redis unless REDIS_URL is set,
# SQLite unless DATABASE_URL is set, migrations, the worker and gunicorn. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m scripts.launch "$@"
