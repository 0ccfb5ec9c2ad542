"""The launcher on real processes: the embedded Redis's log, the data folder's lock, signals
during start-up, a killed launcher's children, a stop that lets the running job finish."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import select

from models.db import make_engine
from models.tables import Job
from scripts.launch import REDIS_LOG, start_embedded_redis
from tests.conftest import ROOT
from tests.stack import FAST_ENGINES, free_port


def test_the_embedded_redis_logs_to_a_file_and_never_blocks_on_its_log(tmp_path: Path) -> None:
    server = start_embedded_redis(tmp_path / "redis")
    try:
        pid = server.process.pid
        for fd in (1, 2):
            mode = Path(f"/proc/{pid}/fd/{fd}").stat().st_mode
            assert not stat.S_ISFIFO(mode), f"fd {fd} of the server is a pipe"
        client = redis.Redis(port=server.port, socket_timeout=10)
        assert client.config_get("logfile")["logfile"] == REDIS_LOG
        client.config_set("loglevel", "verbose")  # a line per connection opened and closed
        log = tmp_path / "redis" / REDIS_LOG
        while log.stat().st_size < 256 * 1024:  # four times a pipe's buffer
            for _ in range(200):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10):
                    pass
            assert client.ping()  # a blocked server times out here
    finally:
        server.stop()


# The processes a launcher started carry this variable (with a value of the test's own), so a
# test finds every one of them, even once the launcher is gone and they were re-parented.
MARK = "VOICECHAT_LAUNCHER_TEST"


def _marked(mark: str) -> set[int]:
    """The live (not zombie) processes whose environment holds `MARK=mark`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ and state != "Z":
            found.add(int(entry.name))
    return found


def _until(condition: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


class Launcher:
    """`python -m scripts.launch` in its own session, as a shell runs it in the foreground."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.mark = uuid.uuid4().hex
        self.port = free_port()
        self.log = data_dir / "launcher.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        self.env = {**base, **FAST_ENGINES, "DATA_DIR": str(data_dir), MARK: self.mark, **env}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scripts.launch", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def children(self) -> set[int]:
        return _marked(self.mark) - {self.process.pid}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        _until(lambda: "service ready" in self.output() or self.process.poll() is not None, "ready")
        assert self.process.poll() is None, self.output()[-3000:]

    def ctrl_c(self) -> None:
        """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def wait_gone(self) -> None:
        """Waits until the launcher and every process it started have exited."""
        _until(lambda: self.process.poll() is not None, "the launcher to exit", timeout=600)
        _until(lambda: not self.children(), f"its children to exit: {self.children()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.ctrl_c()
        self.wait_gone()


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    started: list[Launcher] = []

    def launch(**env: str) -> Launcher:
        started.append(Launcher(tmp_path / "data", **env))
        return started[-1]

    yield launch
    for launcher in started:
        launcher.stop()
        for pid in launcher.children():  # only if stop() failed its test
            os.kill(pid, signal.SIGKILL)


@pytest.mark.e2e
def test_a_second_start_on_the_same_data_folder_is_refused(
    launched: Callable[..., Launcher],
) -> None:
    first = launched()
    first.wait_ready()
    second = subprocess.run(
        [sys.executable, "-m", "scripts.launch", "--port", str(free_port())],
        cwd=ROOT, env=first.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode == 1, second.stderr
    assert f"another launcher (pid {first.process.pid}) is running against" in second.stderr
    assert requests.get(f"{first.url}/readyz", timeout=10).status_code == 200  # untouched


@pytest.mark.e2e
def test_ctrl_c_during_start_leaves_no_child_running(launched: Callable[..., Launcher]) -> None:
    launcher = launched()
    # Redis has started: the launcher is migrating or starting the rest, not ready yet.
    _until(lambda: bool(launcher.children()), "the embedded Redis to start")
    launcher.ctrl_c()
    launcher.wait_gone()
    assert "service ready" not in launcher.output()
    assert "stopped by SIGINT" in launcher.output(), launcher.output()[-3000:]
    assert launcher.process.returncode == 0


@pytest.mark.e2e
def test_a_killed_launcher_takes_its_children_down(launched: Callable[..., Launcher]) -> None:
    launcher = launched(WORKERS="2", RETENTION_INTERVAL_SECONDS="1")
    launcher.wait_ready()
    # Redis, gunicorn and its workers, 2 workers (+ pools), the maintenance worker, beat.
    assert len(launcher.children()) >= 7
    commands = [_command_line(pid) for pid in launcher.children()]
    assert sum(" beat " in line for line in commands) == 1, commands  # one beat per deployment
    assert any("-Q maintenance --pool threads" in line for line in commands), commands
    # Beat sends the sweep; the maintenance worker (no models) runs it and is no job worker.
    _until(lambda: "retention sweep done" in launcher.output(), "a retention sweep")
    assert list(launcher.data_dir.glob("celerybeat-schedule*"))
    ready = requests.get(f"{launcher.url}/readyz", timeout=10).json()
    assert ready["checks"]["workers"]["count"] == 2
    launcher.process.kill()
    launcher.wait_gone()


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.e2e
def test_ctrl_c_while_a_job_runs_lets_it_finish(launched: Callable[..., Launcher]) -> None:
    launcher = launched(LLM_ENGINE="tests.engines:PacedGenerator")
    launcher.wait_ready()
    slow = "slow " + " ".join(f"w{i}" for i in range(24))  # about 6 s of generation
    answer = requests.post(f"{launcher.url}/v1/jobs", json={"text": slow}, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    log = launcher.data_dir / "paced-generations.log"
    _until(lambda: log.exists() and slow in log.read_text(), "the generation to start")
    launcher.ctrl_c()
    launcher.wait_gone()
    engine = make_engine(f"sqlite:///{launcher.data_dir / 'voicechat.db'}")
    try:
        with engine.connect() as connection:
            status = connection.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
    finally:
        engine.dispose()
    assert status == "succeeded", launcher.output()[-3000:]
    assert "end\t" in log.read_text()
