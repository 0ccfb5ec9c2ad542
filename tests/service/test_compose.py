"""The docker-compose deployments (the sketch at the root, the Jetson Orin's) parse and wire up."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.settings import Settings
from tests.conftest import ROOT

JETSON = ROOT / "deploy" / "jetson"


def _compose() -> dict:  # type: ignore[type-arg]
    return dict(yaml.safe_load((ROOT / "docker-compose.yaml").read_text()))


def test_compose_has_every_service_wired_to_redis_and_postgres() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "redis", "postgres", "flower", "migrate"} <= set(services)
    for name in ("api", "worker", "flower"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    worker = services["worker"]["command"]
    assert "--concurrency=1" in worker and "--prefetch-multiplier=1" in worker
    assert "appendonly" in " ".join(services["redis"]["command"])


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _docker_compose_available(), reason="the docker compose plugin is not installed here"
)
def test_docker_compose_accepts_the_file() -> None:
    subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "--quiet"],
        check=True,
        capture_output=True,
    )


def _env_example() -> dict[str, str]:
    lines = (JETSON / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def _passes_through(value: str, variable: str) -> bool:
    """The compose value is `${VARIABLE...}`: taken from deploy/jetson/.env."""
    return re.fullmatch(rf"\$\{{{variable}(:[-?][^}}]*)?\}}", value) is not None


def test_jetson_compose_runs_a_gpu_worker_per_gpu_with_the_orin_engines() -> None:
    compose: dict[str, Any] = yaml.safe_load((JETSON / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"api", "redis", "postgres", "flower", "migrate"} <= set(services)
    workers = {
        name: service
        for name, service in services.items()
        if "worker" in service.get("command", [])
        and "celery" in service["command"]
        and service["environment"].get("WORKER_ROLE") != "maintenance"
    }
    assert workers, "no celery worker service"
    gpus = []
    for name, worker in workers.items():
        assert worker["runtime"] == "nvidia", name
        assert worker["build"]["dockerfile"] == "deploy/jetson/Dockerfile.worker"
        env = worker["environment"]
        assert env["CUDA_VISIBLE_DEVICES"] == env["WORKER_GPU"], name
        gpus.append(env["WORKER_GPU"])
        command = worker["command"]
        assert "--concurrency=1" in command and "--prefetch-multiplier=1" in command
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        for setting in ("STT_ENGINE", "LLM_ENGINE", "TTS_ENGINE", "LLM_MODEL", "COQUI_MODEL"):
            assert _passes_through(env[setting], setting), (name, setting)
        caches = [volume.split(":") for volume in worker["volumes"]]
        named = {source: target for source, target in caches if target.startswith("/models/")}
        assert len(named) >= 3 and set(named) <= set(compose["volumes"])
    assert len(gpus) == len(set(gpus)), "two workers share a GPU"

    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] == "everysec"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"

    flower = services["flower"]
    assert "flower" in flower["command"]
    assert _passes_through(flower["environment"]["FLOWER_BASIC_AUTH"], "FLOWER_BASIC_AUTH")
    assert not any("basic-auth" in part for part in flower["command"])  # nothing hard-coded
    api = services["api"]["command"]
    assert api[0] == "gunicorn" and "python:api.gunicorn_conf" in api and "api:create_app()" in api


@pytest.mark.parametrize("path", [ROOT / "docker-compose.yaml", JETSON / "docker-compose.yaml"])
def test_compose_runs_one_beat_and_a_maintenance_worker_apart_from_the_job_workers(
    path: Path,
) -> None:
    services: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    celery = {
        name: s["command"] for name, s in services.items() if "celery" in s.get("command", [])
    }
    beats = [name for name, command in celery.items() if "beat" in command]
    assert len(beats) == 1 and "deploy" not in services[beats[0]]  # one beat, never scaled
    assert any(part == "--schedule=/data/celerybeat-schedule" for part in celery[beats[0]])
    maintenance = services["maintenance"]
    command = maintenance["command"]
    assert command[command.index("-Q") + 1] == "maintenance"
    assert command[command.index("--pool") + 1] == "threads"
    assert maintenance["environment"]["WORKER_ROLE"] == "maintenance"
    assert "runtime" not in maintenance  # no GPU: it loads no models
    for name, command in celery.items():
        if "worker" in command and name != "maintenance":
            assert "--queues=voicechat" in command and "-Q" not in command, name


def test_jetson_example_settings_choose_the_orin_engines() -> None:
    example = _env_example()
    assert example["STT_ENGINE"] == "openai-whisper"
    assert example["WHISPER_MODEL"] in ("base.en", "small.en", "base", "small")
    assert example["LLM_ENGINE"] == "mlc"
    assert example["LLM_MODEL"] == "HF://mlc-ai/Mistral-7B-Instruct-v0.3-q4f16_1-MLC"
    assert example["TTS_ENGINE"] == "coqui"
    assert example["COQUI_MODEL"] == "tts_models/en/ljspeech/vits"
    assert ":" in example["FLOWER_BASIC_AUTH"]
    # The service's own strict parser accepts the example as it stands.
    settings = Settings.from_env(example)
    assert (settings.llm_engine, settings.mlc_mode, settings.llm_context_tokens) == (
        "mlc",
        "interactive",
        4096,
    )


def test_jetson_worker_image_builds_on_an_mlc_image_for_l4t_r36() -> None:
    dockerfile = (JETSON / "Dockerfile.worker").read_text()
    base = re.search(r"^ARG MLC_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base is not None and re.fullmatch(r"dustynv/mlc:[\w.]+-r36\.\d\.\d", base[1])
    assert "FROM ${MLC_IMAGE}" in dockerfile


@pytest.mark.skipif(
    not _docker_compose_available(), reason="the docker compose plugin is not installed here"
)
def test_docker_compose_accepts_the_jetson_file() -> None:
    subprocess.run(
        [
            "docker", "compose", "-f", str(JETSON / "docker-compose.yaml"),
            "--env-file", str(JETSON / ".env.example"), "config", "--quiet",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def test_jetson_volumes_users_and_gpus_fit_together() -> None:
    compose: dict[str, Any] = yaml.safe_load((JETSON / "docker-compose.yaml").read_text())
    services = compose["services"]
    worker, fetch = services["worker-gpu0"], services["fetch-models"]
    # The fetch step fills exactly the volumes the worker reads, on the same GPU image.
    assert sorted(fetch["volumes"]) == sorted(worker["volumes"])
    assert fetch["image"] == worker["image"] and fetch["runtime"] == "nvidia"
    assert fetch["profiles"] == ["setup"] and fetch["restart"] == "no"
    # It closes the engines it warmed: MLC's engine threads would keep the step alive.
    script = fetch["command"][-1]
    assert script.index("get_pipeline(") < script.index("close_engines()")
    # Only the GPU worker and its fetch step take the NVIDIA runtime, each engine on CUDA.
    gpu = {name for name, service in services.items() if service.get("runtime") == "nvidia"}
    assert gpu == {"worker-gpu0", "fetch-models"}
    for setting in ("WHISPER_DEVICE", "LLM_DEVICE", "TTS_DEVICE"):
        assert worker["environment"][setting] == f"${{{setting}:-cuda}}"
    # The API (uid 1000, the root Dockerfile) and the worker share /data on one named volume;
    # no service overrides its image's user, so the uid Dockerfile.worker gives /data holds.
    for name in ("api", "worker-gpu0", "maintenance", "beat"):
        assert "voicechat-data:/data" in services[name]["volumes"], name
    assert not [name for name, service in services.items() if "user" in service]
    # The worker may not download or compile; the fetch step must.
    policies = ("MLC_JIT_POLICY", "MLC_DOWNLOAD_CACHE_POLICY")
    assert all(worker["environment"][policy] == "READONLY" for policy in policies)
    assert all(fetch["environment"][policy] == "ON" for policy in policies)
    named = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
    }
    assert named == set(compose["volumes"])  # every named volume declared, none left over
