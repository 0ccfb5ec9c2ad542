"""The docker-compose deployment sketch parses and wires the services together."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


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
