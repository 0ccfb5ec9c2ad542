"""Submit throughput: `POST /v1/jobs` under wrk, each figure against the floor's in the same run.

Run: `.venv/bin/python -m bench.submit [--rounds N] [--seconds S] [--connections C]`. Needs
Debian's `wrk`. Starts the service with the benchmark's null engines, keyed, and beside it the
floor (`bench/floor.py`: the least code that does submit's work, under the same gunicorn
settings), both on one database and one Redis: SQLite (the embedded default) and, when
`BENCH_POSTGRES_URL` names a PostgreSQL server, a new database made on it for the run (and
dropped after). The service's job workers are paused, so neither queue is drained while
measured. Each submit is sent with the next of `CALLERS` API keys, the service's and the floor's
their own, under the deployed limits (but the queue's depth).

Each round runs wrk on `/healthz` of the service then of the floor, then on the submit route of
each; each figure quoted is the median over rounds, its ratio the median of the rounds' ratios
to the floor's (each round printed as it ends). Also the CPU time per request of each server's
processes (the launcher's: API, idle workers, beat; the floor's gunicorn), not the Redis or
PostgreSQL server they share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench import floor
from bench.service import bench_database, databases, running, service_cpu_seconds
from bench.table import Row, markdown
from harness.engines import NULL_ENGINES, UNREACHED_LIMITS
from models.api_keys import create_key
from models.db import make_engine
from models.queue import JOB_QUEUE
from models.tables import Job, JobStatus
from scripts.launch import start_embedded_redis

BODY = json.dumps({"text": "What is the capital of France?"})
# The callers a run's submits are spread over, each with the deployed limits (600 requests a
# minute, 100 unfinished jobs): a round of thousands of submits on one key needed limits lifted
# out of reach, and then each submit counted all of the key's queued jobs, which no deployed key
# can have (its limit stops it at 100).
CALLERS = 256
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors: a figure with errors is not quoted
    cpu_ms: float = 0.0  # the service's CPU time per request (`service_cpu_seconds`)


def wrk(
    url: str, seconds: int, connections: int, script: Path | None = None, timeout: int = 2
) -> Load:
    """Runs wrk with two threads and returns its throughput, latency quantiles and errors (an
    answer later than `timeout` seconds is one), and the CPU time the service spent per request
    meanwhile."""
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout}s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    service = url.split("/", 3)
    base = "/".join(service[:3])
    cpu = service_cpu_seconds(base)
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = service_cpu_seconds(base) - cpu
    sent = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    quantiles = {
        q: float(v) * _UNITS[u] for q, v, u in re.findall(r"(\d+)%\s+([\d.]+)(us|ms|s)\b", output)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    return Load(rate, quantiles["50"], quantiles["99"], errors, cpu * 1000 / max(sent, 1))


def post_script(path: Path, secrets: list[str]) -> Path:
    """A wrk script that POSTs the body, each request with the next of `secrets`' keys; each
    key's request is formatted once, so the client's cost per request stays that of a fixed one."""
    keys = ", ".join(json.dumps(f"Bearer {secret}") for secret in secrets)
    path.write_text(
        f"""wrk.method = "POST"
wrk.body = {json.dumps(BODY)}
wrk.headers["Content-Type"] = "application/json"
local keys, requests, n = {{{keys}}}, {{}}, 0
init = function()
  for i, key in ipairs(keys) do
    wrk.headers["Authorization"] = key
    requests[i] = wrk.format()
  end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
"""
    )
    return path


def callers(database_url: str, name: str, count: int = CALLERS) -> list[str]:
    """Makes `count` API keys under the service's own limits; returns their secrets."""
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        made = [create_key(session, f"{name}-{n}").secret for n in range(count)]
    engine.dispose()
    return made


def pause_workers(redis_url: str) -> None:
    """Stops the service's job workers taking jobs (they stay up, and ready): neither the service's
    queue nor the floor's is drained during a measure, so both pay the same."""
    broker = Celery(broker=redis_url)
    if not broker.control.cancel_consumer(JOB_QUEUE, reply=True, timeout=5):
        raise RuntimeError("no job worker answered the pause")
    broker.close()


# One round's loads: by route, the service's and the floor's.
Round = dict[str, tuple[Load, Load]]


def measure(
    urls: tuple[str, str],
    keys: tuple[list[str], list[str]],
    rounds: int,
    seconds: int,
    connections: int,
) -> list[Round]:
    """Rounds of `/healthz` on the service then on the floor, then submit on each; each round
    printed as it ends, its figures as ratios to the floor's."""
    with tempfile.TemporaryDirectory() as folder:
        scripts = [
            post_script(Path(folder) / f"{n}.lua", secrets) for n, secrets in enumerate(keys)
        ]
        for url in urls:  # warm-up: connections, imports, caches
            wrk(f"{url}/healthz", 2, connections)
        measured: list[Round] = []
        for n in range(1, rounds + 1):
            healthz = [wrk(f"{url}/healthz", seconds, connections) for url in urls]
            submit = [
                wrk(f"{url}/v1/jobs", seconds, connections, s)
                for url, s in zip(urls, scripts, strict=True)
            ]
            measured.append({"healthz": (healthz[0], healthz[1]), "submit": (submit[0], submit[1])})
            print(
                f"round {n}: submit {_against(submit, 'requests_per_s', 'req/s')}, "
                f"p99 {_against(submit, 'p99_ms', 'ms')}; "
                f"/healthz {_against(healthz, 'requests_per_s', 'req/s')}",
                flush=True,
            )
    return measured


def _against(loads: list[Load], figure: str, unit: str) -> str:
    value, floor_value = (getattr(load, figure) for load in loads)
    return f"{value:,.1f} {unit} = {value / floor_value:.2f} x floor {floor_value:,.1f}"


def run(rounds: int, seconds: int, connections: int) -> dict[str, list[Round]]:
    """Measures on SQLite and, if configured, on PostgreSQL: the service and the floor on one
    database and one Redis, the service's job workers paused."""
    # The deployed limits, but the queue's depth: the paused workers let it grow past its 1,000.
    env = {**NULL_ENGINES, "MAX_QUEUE_DEPTH": UNREACHED_LIMITS["MAX_QUEUE_DEPTH"]}
    results = {}
    for name in databases():
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            redis = start_embedded_redis(folder / "redis")
            stack.callback(redis.stop)
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
            database_url = stack.enter_context(bench_database(name, folder))
            url = stack.enter_context(
                running(**env, DATABASE_URL=database_url, REDIS_URL=redis_url)
            )
            pause_workers(redis_url)
            floor_url = stack.enter_context(floor.running(database_url, redis_url, **env))
            print(f"submit on {name}, service {url}, floor {floor_url}:", flush=True)
            keys = (callers(database_url, "service"), callers(database_url, "floor"))
            results[name] = measure((url, floor_url), keys, rounds, seconds, connections)
            _check_undrained(database_url)
    return results


def _check_undrained(database_url: str) -> None:
    """Raises if a job worker took a job during the measure: the figures would not compare."""
    engine = make_engine(database_url)
    with engine.connect() as connection:
        taken = connection.scalar(select(func.count()).where(Job.status != JobStatus.QUEUED.value))
    engine.dispose()
    if taken:
        raise RuntimeError(f"{taken} jobs were taken by a worker meant to be paused")


# What each row quotes: its measure, the route and the wrk figure, unit and format.
FIGURES = [
    ("POST /v1/jobs throughput", "submit", "requests_per_s", "req/s", ",.0f"),
    ("POST /v1/jobs p50", "submit", "p50_ms", "ms", ".1f"),
    ("POST /v1/jobs p99", "submit", "p99_ms", "ms", ".1f"),
    ("GET /healthz throughput", "healthz", "requests_per_s", "req/s", ",.0f"),
    ("service CPU per POST /v1/jobs", "submit", "cpu_ms", "ms", ".2f"),
]


def rows(rounds: int = 3, seconds: int = 10, connections: int = 16) -> list[Row]:
    """The submit figures as table rows, one set per database: each the median over rounds, its
    ratio the median of the rounds' ratios to the floor's, their spread beside it."""
    table = []
    for name, measured in run(rounds, seconds, connections).items():
        bench = f"submit ({name}, {connections} connections)"
        for measure, route, figure, unit, form in FIGURES:
            pairs = [[getattr(load, figure) for load in each[route]] for each in measured]
            ratios = [value / floor_value for value, floor_value in pairs]
            floor_median = statistics.median(floor_value for _, floor_value in pairs)
            spread = f"rounds {min(ratios):.2f} to {max(ratios):.2f}"
            against = f"floor {floor_median:{form}} {unit} ({spread})"
            value = statistics.median(value for value, _ in pairs)
            table.append(Row(bench, measure, value, unit, statistics.median(ratios), against))
        errors = sum(load.errors for each in measured for pair in each.values() for load in pair)
        table.append(Row(bench, "errors (non-2xx, socket), service and floor", errors, ""))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(markdown(rows(args.rounds, args.seconds, args.connections)))


if __name__ == "__main__":
    main()
