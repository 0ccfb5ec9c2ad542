"""The service started for a benchmark the way a user starts it: `python -m scripts.launch`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from harness.stack import ROOT, add_key, free_port
from models.settings import Settings
from scripts.launch import migrate

# The launcher's process id by the URL it serves, while it runs: the service's processes (the
# API, the workers, beat, the embedded Redis) are its descendants.
_LAUNCHERS: dict[str, int] = {}
# The API key each running service was started with: benchmarks run keyed, as deployed.
_SECRETS: dict[str, str] = {}


def auth(url: str) -> dict[str, str]:
    """The `Authorization` header of the service running at `url`."""
    return {"Authorization": f"Bearer {_SECRETS[url]}"}


def client(url: str) -> requests.Session:
    """An HTTP session that sends the API key of the service running at `url`."""
    http = requests.Session()
    http.headers.update(auth(url))
    return http


def service_processes(url: str) -> dict[int, str]:
    """The command lines of the service at `url` by process id: its launcher and the launcher's
    descendants (the API, the workers, beat, the embedded Redis)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # the process has just exited
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    family = {_LAUNCHERS[url]}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    commands = {}
    for pid in family:
        with contextlib.suppress(OSError):
            commands[pid] = (
                (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
    return commands


def service_cpu_seconds(url: str) -> float:
    """The CPU time (user and system) the service at `url` has used so far, summed over its
    processes (`service_processes`); a PostgreSQL server it uses is not among them."""
    ticks = 0
    for pid in service_processes(url):
        with contextlib.suppress(OSError):
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # stat's 14th and 15th: utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Makes an empty database on the PostgreSQL server of `server_url` and yields its URL;
    drops it afterwards. Each run starts from no jobs: a database kept between runs would hold
    the last run's queue, which the next run's worker would spend its time on."""
    name = f"voicechat_bench_{os.getpid()}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def databases() -> list[str]:
    """The databases a benchmark measures on: SQLite, and PostgreSQL when `BENCH_POSTGRES_URL`
    names a server."""
    return ["sqlite", "postgresql"] if os.environ.get("BENCH_POSTGRES_URL") else ["sqlite"]


@contextmanager
def bench_database(name: str, folder: Path) -> Iterator[str]:
    """An empty database of kind `name` (`databases`) for one run: a file in `folder`, or a new
    database on `BENCH_POSTGRES_URL`'s server, dropped afterwards (`fresh_database`)."""
    if name == "postgresql":
        with fresh_database(os.environ["BENCH_POSTGRES_URL"]) as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'voicechat.db'}"


@contextmanager
def running(timeout: float = 600.0, **env: str) -> Iterator[str]:
    """Runs the launcher in a temporary data folder, keyed (an API key is made first: `auth`,
    `client`), and yields its URL once `/readyz` is 200.

    Args:
        timeout: How long the start may take (the real models load in about a minute).
        **env: Settings for the service (e.g. `DATABASE_URL`, `LLM_ENGINE`).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="voicechat-bench-") as data_dir:
        environ = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
            "DATA_DIR": data_dir,
            **env,
        }
        database_url = Settings.from_env({**environ, "DATA_DIR": data_dir}).database_url
        migrate(database_url)
        secret = add_key(database_url, "bench").secret
        # No Flower: a benchmark reads nothing from it, and its fixed port is one per machine.
        command = [sys.executable, "-m", "scripts.launch", "--port", str(port), "--no-flower"]
        url = f"http://127.0.0.1:{port}"
        with serve(command, environ, url, secret=secret, ready_path="/readyz", timeout=timeout):
            yield url


@contextmanager
def serve(
    command: list[str],
    env: dict[str, str],
    url: str,
    *,
    secret: str,
    ready_path: str,
    timeout: float = 600.0,
) -> Iterator[None]:
    """Runs `command` in a session of its own, serving at `url` keyed by `secret` (`auth`,
    `client`, `service_cpu_seconds` know it), until `ready_path` answers 200; stops it after."""
    with tempfile.TemporaryDirectory(prefix="voicechat-bench-log-") as folder:
        log_path = Path(folder) / "service.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _LAUNCHERS[url], _SECRETS[url] = process.pid, secret
        try:
            _until_ready(url + ready_path, process, timeout, log_path)
            yield
        finally:
            _stop(process)
            log.close()
            del _LAUNCHERS[url], _SECRETS[url]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stops the launcher's process group: SIGINT, then SIGKILL after two minutes."""
    with contextlib.suppress(ProcessLookupError):  # the launcher exited on its own
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _until_ready(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(
                f"the service exited with {process.returncode} before it was ready; "
                "its log ends:\n" + "\n".join(tail)
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("the service was not ready in time")
