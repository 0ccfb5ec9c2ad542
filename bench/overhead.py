"""Per-job overhead: submit → finished and visible, for jobs whose engines do nothing.

Run: `.venv/bin/python -m bench.overhead [--jobs N]` (on PostgreSQL too with
`BENCH_POSTGRES_URL`, as `bench.submit`). Starts the service with the benchmark's null engines
(`harness/engines.py`), so every millisecond measured is the service's own: the API's validation
and row, the broker, the worker's claim, stage writes and events, the final row, and the answer.
Each job is sent with `Prefer: wait=30`, which answers as soon as the job's `done` event arrives
and its row reads `succeeded`. Quoted against the same client's `GET /healthz` round trip,
measured in the same run; and split into steps by the job's own timestamps (made, claimed,
finished; the service runs on the client's machine, so on its clock). With it, the CPU time the
service's processes spent per job: on a 2-core machine, what the wall time waits for.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.service import bench_database, client, databases, running, service_cpu_seconds
from bench.table import Row, markdown
from harness.engines import NULL_ENGINES, UNREACHED_LIMITS


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# Where a job's time goes, from its own timestamps: the request to its row, the row to the claim,
# the claim to the end, and the end to the answer in the client's hands.
STEPS = {
    "submitted": "request → row made",
    "queued": "row made → claimed",
    "running": "claimed → succeeded",
    "answered": "succeeded → answer received",
}


def _steps(job: dict[str, Any], sent: float, received: float) -> dict[str, float]:
    created, started, finished = (
        datetime.fromisoformat(job[name]).timestamp()
        for name in ("created_at", "started_at", "finished_at")
    )
    spans = (created - sent, started - created, finished - started, received - finished)
    return {step: span * 1000 for step, span in zip(STEPS, spans, strict=True)}


def measure(url: str, jobs: int) -> dict[str, float]:
    """Times `jobs` sequential text jobs and as many `/healthz` round trips."""
    http = client(url)
    for _ in range(20):  # warm-up
        http.post(f"{url}/v1/jobs", json={"text": "Hi."}, headers={"Prefer": "wait=30"}, timeout=60)
    waits, bare, steps = [], [], []
    cpu = service_cpu_seconds(url)
    for _ in range(jobs):
        started = time.perf_counter()
        http.get(f"{url}/healthz", timeout=10)
        bare.append((time.perf_counter() - started) * 1000)
        sent = time.time()  # the service's timestamps are on this machine's clock too
        started = time.perf_counter()
        answer = http.post(
            f"{url}/v1/jobs", json={"text": "Hi."}, headers={"Prefer": "wait=30"}, timeout=60
        )
        waits.append((time.perf_counter() - started) * 1000)
        job = answer.json()
        if answer.status_code != 200 or job["status"] != "succeeded":
            raise RuntimeError(f"job did not finish within the wait: {answer.status_code}")
        steps.append(_steps(job, sent, sent + waits[-1] / 1000))
    cpu = service_cpu_seconds(url) - cpu
    return {
        "overhead_p50_ms": statistics.median(waits),
        "overhead_p99_ms": quantile(waits, 0.99),
        **{f"{step}_p50_ms": statistics.median(s[step] for s in steps) for step in STEPS},
        "healthz_p50_ms": statistics.median(bare),
        "ratio_p50": statistics.median(waits) / statistics.median(bare),
        # All of the service's processes, the /healthz requests' share included; not PostgreSQL's.
        "cpu_ms": cpu * 1000 / jobs,
    }


def rows(jobs: int = 200) -> list[Row]:
    """The overhead figures as table rows, on SQLite and, when `BENCH_POSTGRES_URL` names a
    PostgreSQL server, on a new database made on it for the run (as `bench.submit`)."""
    table = []
    for name in databases():
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            database_url = stack.enter_context(bench_database(name, folder))
            env = {**NULL_ENGINES, **UNREACHED_LIMITS, "DATABASE_URL": database_url}
            f = measure(stack.enter_context(running(**env)), jobs)
        bench = f"per-job overhead (null engines, {name})"
        healthz = f"GET /healthz {f['healthz_p50_ms']:.1f} ms"
        table += [
            Row(
                bench,
                "submit → succeeded and visible, p50",
                f["overhead_p50_ms"],
                "ms",
                f["ratio_p50"],
                healthz,
            ),
            Row(bench, "submit → succeeded and visible, p99", f["overhead_p99_ms"], "ms"),
            Row(bench, "the service's CPU per job (and its GET /healthz)", f["cpu_ms"], "ms"),
            *(
                Row(bench, f"of which {what}, p50", f[f"{step}_p50_ms"], "ms")
                for step, what in STEPS.items()
            ),
        ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    print(markdown(rows(args.jobs)))


if __name__ == "__main__":
    main()
