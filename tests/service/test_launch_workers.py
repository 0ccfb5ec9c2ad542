"""`scripts/serve.sh --workers N` (the launcher, `WORKERS`): N worker processes, each pinnable to
a GPU (`WORKER_GPUS`), all taking jobs at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.stack import FAST_ENGINES
from models.settings import SettingError
from scripts.launch import Children, service_commands, worker_environments
from tests.conftest import ROOT, running_service


def test_each_worker_is_named_apart_and_pinned_round_robin() -> None:
    commands = service_commands("127.0.0.1", 8000, flower=False, workers=3)
    workers = [name for name in commands if name.startswith("worker")]
    assert workers == ["worker-1", "worker-2", "worker-3"]
    names = {next(a for a in commands[w] if a.startswith("--hostname=")) for w in workers}
    assert len(names) == 3
    envs = worker_environments({"WORKER_GPUS": "0, 1"}, 3)
    assert [env["WORKER_GPU"] for env in envs] == ["0", "1", "0"]
    assert worker_environments({}, 2) == [{}, {}]
    with pytest.raises(SettingError, match="WORKER_GPUS"):
        worker_environments({"WORKER_GPUS": "0,gpu1"}, 2)


@pytest.mark.parametrize("argument", [["--workers", "0"], ["--workers", "two"]])
def test_a_malformed_worker_count_stops_the_launcher_naming_it(argument: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.launch", *argument],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--workers" in done.stderr, done.stderr


def test_a_process_of_no_stop_group_is_stopped_before_redis() -> None:
    # A command `service_commands` gains under a new name needs Redis to its end, as the rest.
    children = Children()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    children.processes = {name: subprocess.Popen(sleep) for name in ("worker-1", "exporter")}
    running_at_redis_stop: list[bool] = []

    class Redis:
        def stop(self) -> None:
            running_at_redis_stop.extend(p.poll() is None for p in children.processes.values())

    children.redis = Redis()  # type: ignore[assignment]
    try:
        children.stop(worker_seconds=10)
    finally:
        for process in children.processes.values():
            process.kill()
            process.wait()
    assert running_at_redis_stop == [False, False]


@pytest.mark.e2e
def test_two_workers_run_two_jobs_at_once(tmp_path: Path) -> None:
    engines = {**FAST_ENGINES, "LLM_ENGINE": "harness.engines:PacedGenerator"}
    with running_service(tmp_path, WORKERS="2", **engines) as service:
        ready = service.http.get(f"{service.url}/readyz", timeout=10).json()
        assert ready["checks"]["workers"]["count"] == 2
        slow = "slow " + " ".join(f"w{i}" for i in range(20))  # about 5 s each
        ids = [service.submit(json={"text": slow})["id"] for _ in range(2)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [service.http.get(f"{service.url}/v1/jobs/{i}", timeout=10).json() for i in ids]
            if all(job["status"] == "running" for job in jobs):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the two jobs never ran at once: {jobs}")
        assert [service.wait(i)["status"] for i in ids] == ["succeeded", "succeeded"]
