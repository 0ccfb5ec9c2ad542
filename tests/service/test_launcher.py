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

from harness.stack import FAST_ENGINES, free_port
from models.api_keys import OPEN_NOTICE
from models.db import make_engine
from models.tables import Job
from scripts.launch import REDIS_LOG, migrate, service_commands, start_embedded_redis
from tests.conftest import ROOT, add_key, make_settings


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
    """`python -m scripts.launch` in its own session, as a shell runs it in the foreground;
    keyed (`auth`), unless `open_mode`."""

    def __init__(self, data_dir: Path, *args: str, open_mode: bool = False, **env: str) -> None:
        self.data_dir = data_dir
        self.mark = uuid.uuid4().hex
        self.port = free_port()
        self.log = data_dir / "launcher.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        self.env = {**base, **FAST_ENGINES, "DATA_DIR": str(data_dir), MARK: self.mark, **env}
        self.auth = {}
        if not open_mode:
            database_url = make_settings(data_dir, **env).database_url
            migrate(database_url)
            self.auth = {"Authorization": f"Bearer {add_key(database_url).secret}"}
        if "--no-flower" not in args and "--flower-port" not in args:  # Flower starts too
            args = (*args, "--flower-port", str(free_port()))
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scripts.launch", "--port", str(self.port), *args],
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

    def launch(*args: str, open_mode: bool = False, **env: str) -> Launcher:
        started.append(Launcher(tmp_path / "data", *args, open_mode=open_mode, **env))
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
    launcher = launched(LLM_ENGINE="harness.engines:PacedGenerator")
    launcher.wait_ready()
    slow = "slow " + " ".join(f"w{i}" for i in range(24))  # about 6 s of generation
    answer = requests.post(
        f"{launcher.url}/v1/jobs", json={"text": slow}, headers=launcher.auth, timeout=30
    )
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


@pytest.mark.e2e
def test_with_no_key_the_launcher_refuses_a_public_address(
    launched: Callable[..., Launcher],
) -> None:
    launcher = launched("--host", "0.0.0.0", open_mode=True)
    assert launcher.process.wait(timeout=120) == 1
    refusal = [line for line in launcher.output().splitlines() if "refusing" in line]
    assert refusal == [
        "launch: refusing to listen on 0.0.0.0: no API key exists, so the service would be open "
        "to anyone who reaches it; create one with `flask --app api keys create --name NAME`, "
        "or bind to 127.0.0.1"
    ]
    launcher.wait_gone()  # nothing was started


def _gunicorn(tmp_path: Path, host: str) -> subprocess.Popen[str]:
    """The API's gunicorn, as the compose files run it, on an empty (migrated) database."""
    url = f"sqlite:///{tmp_path / 'voicechat.db'}"
    migrate(url)
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": url, "API_WORKERS": "1"}
    command = service_commands(host, free_port(), flower=False)["api"]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.e2e
def test_gunicorn_refuses_to_start_open_on_a_public_address(tmp_path: Path) -> None:
    refused = _gunicorn(tmp_path, "0.0.0.0")
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 1, output
    assert "gunicorn: refusing to listen on 0.0.0.0: no API key exists" in output
    assert "Booting worker" not in output

    local = _gunicorn(tmp_path, "127.0.0.1")
    try:
        assert local.stdout is not None
        lines = iter(local.stdout.readline, "")
        assert any(OPEN_NOTICE in line for line in lines)  # it goes on serving, open
        assert local.poll() is None
    finally:
        local.terminate()
        local.wait(timeout=60)


@pytest.mark.e2e
def test_flower_starts_by_default_and_answers_only_with_the_generated_password(
    launched: Callable[..., Launcher],
) -> None:
    flower_port = free_port()
    launcher = launched("--flower-port", str(flower_port))  # no flag: Flower is started
    launcher.wait_ready()
    assert f"http://127.0.0.1:{flower_port}/" in launcher.output()
    auth_file = launcher.data_dir / "flower-auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    user, password = auth_file.read_text().strip().split(":", 1)
    assert str(auth_file) in launcher.output() and password not in launcher.output()
    url = f"http://127.0.0.1:{flower_port}/"

    def answers() -> bool:
        try:
            return requests.get(url, timeout=5).status_code == 401
        except requests.ConnectionError:
            return False

    _until(answers, "Flower to answer")
    assert requests.get(url, auth=(user, "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=(user, password), timeout=5).status_code == 200
