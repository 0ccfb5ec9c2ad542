"""Submit throughput: `POST /v1/jobs` under wrk against `GET /healthz` on the same server.

Run: `.venv/bin/python -m bench.submit [--rounds N] [--seconds S] [--connections C]`. Needs
Debian's `wrk`. Starts the service with the benchmark's null engines and limits it never reaches
(`harness/engines.py`), on SQLite (the embedded default) and, when `BENCH_POSTGRES_URL` names a
PostgreSQL server, in a new database made on it for the run (and dropped after).

Each round runs wrk on `/healthz`, then on the submit route, back to back; the figure quoted is
the median over rounds of submit's requests/s, p50 and p99, and of the per-round ratio of
submit's throughput to `/healthz`'s (the bare route of the same server in the same round). Also
the service's CPU time per request (all its processes: the API, the worker draining the jobs as
they come, the embedded Redis; not a PostgreSQL server), for each route.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.service import auth, fresh_database, running, service_cpu_seconds
from bench.table import Row, markdown
from harness.engines import NULL_ENGINES, UNREACHED_LIMITS

BODY = json.dumps({"text": "What is the capital of France?"})
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors: a figure with errors is not quoted
    cpu_ms: float = 0.0  # the service's CPU time per request (`service_cpu_seconds`)


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> Load:
    """Runs wrk with two threads and returns its throughput, latency quantiles and errors, and
    the CPU time the service spent per request meanwhile."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
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


def _post_script(folder: Path, headers: dict[str, str]) -> Path:
    script = folder / "submit.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY)}"]
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in
              {"Content-Type": "application/json", **headers}.items()]  # fmt: skip
    script.write_text("\n".join(lines) + "\n")
    return script


def measure(url: str, rounds: int, seconds: int, connections: int) -> dict[str, float]:
    """Median figures over `rounds` of healthz-then-submit."""
    with tempfile.TemporaryDirectory() as folder:
        script = _post_script(Path(folder), auth(url))
        wrk(f"{url}/healthz", 2, connections)  # warm-up: connections, imports, caches
        pairs = [
            (
                wrk(f"{url}/healthz", seconds, connections),
                wrk(f"{url}/v1/jobs", seconds, connections, script),
            )
            for _ in range(rounds)
        ]
    errors = sum(s.errors for _, s in pairs)
    return {
        "healthz_rps": statistics.median(h.requests_per_s for h, _ in pairs),
        "submit_rps": statistics.median(s.requests_per_s for _, s in pairs),
        "submit_p50_ms": statistics.median(s.p50_ms for _, s in pairs),
        "submit_p99_ms": statistics.median(s.p99_ms for _, s in pairs),
        "ratio": statistics.median(s.requests_per_s / h.requests_per_s for h, s in pairs),
        "healthz_cpu_ms": statistics.median(h.cpu_ms for h, _ in pairs),
        "submit_cpu_ms": statistics.median(s.cpu_ms for _, s in pairs),
        "cpu_ratio": statistics.median(s.cpu_ms / h.cpu_ms for h, s in pairs),
        "errors": float(errors),
    }


def run(rounds: int, seconds: int, connections: int) -> dict[str, dict[str, float]]:
    """Measures on SQLite and, if configured, on PostgreSQL."""
    env = {**NULL_ENGINES, **UNREACHED_LIMITS}
    results = {}
    with running(**env) as url:
        results["sqlite"] = measure(url, rounds, seconds, connections)
    if postgres := os.environ.get("BENCH_POSTGRES_URL", ""):
        with (
            fresh_database(postgres) as database_url,
            running(**env, DATABASE_URL=database_url) as url,
        ):
            results["postgresql"] = measure(url, rounds, seconds, connections)
    return results


def rows(rounds: int = 3, seconds: int = 10, connections: int = 16) -> list[Row]:
    """The submit figures as table rows, one set per database."""
    table = []
    for name, f in run(rounds, seconds, connections).items():
        bench = f"submit ({name}, {connections} connections)"
        healthz = f"GET /healthz {f['healthz_rps']:,.0f} req/s"
        table += [
            Row(bench, "POST /v1/jobs throughput", f["submit_rps"], "req/s", f["ratio"], healthz),
            Row(bench, "POST /v1/jobs p50", f["submit_p50_ms"], "ms"),
            Row(bench, "POST /v1/jobs p99", f["submit_p99_ms"], "ms"),
            Row(
                bench,
                "service CPU per POST /v1/jobs",
                f["submit_cpu_ms"],
                "ms",
                f["cpu_ratio"],
                f"GET /healthz {f['healthz_cpu_ms']:.2f} ms",
            ),
            Row(bench, "errors (non-2xx, socket)", f["errors"], ""),
        ]
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
