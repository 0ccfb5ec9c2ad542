"""Per-job overhead: submit → finished and visible, for jobs whose engines do nothing.

Run: `.venv/bin/python -m bench.overhead [--jobs N]`. Starts the service with the benchmark's
null engines (`bench/engines.py`), so every millisecond measured is the service's own: the API's
validation and row, the broker, the worker's claim, stage writes and events, the final row, and
the answer. Each job is sent with `Prefer: wait=30`, which answers as soon as the job's `done`
event arrives and its row reads `succeeded`. Quoted against the same client's `GET /healthz`
round trip, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from bench.engines import NULL_ENGINES, UNREACHED_LIMITS
from bench.service import running
from bench.table import Row, markdown


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure(url: str, jobs: int) -> dict[str, float]:
    """Times `jobs` sequential text jobs and as many `/healthz` round trips."""
    http = requests.Session()
    for _ in range(20):  # warm-up
        http.post(f"{url}/v1/jobs", json={"text": "Hi."}, headers={"Prefer": "wait=30"}, timeout=60)
    waits, bare, queued = [], [], []
    for _ in range(jobs):
        started = time.perf_counter()
        http.get(f"{url}/healthz", timeout=10)
        bare.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        answer = http.post(
            f"{url}/v1/jobs", json={"text": "Hi."}, headers={"Prefer": "wait=30"}, timeout=60
        )
        waits.append((time.perf_counter() - started) * 1000)
        job = answer.json()
        if answer.status_code != 200 or job["status"] != "succeeded":
            raise RuntimeError(f"job did not finish within the wait: {answer.status_code}")
        queued.append(job["timings"]["queued_s"] * 1000)
    return {
        "overhead_p50_ms": statistics.median(waits),
        "overhead_p99_ms": quantile(waits, 0.99),
        "queued_p50_ms": statistics.median(queued),
        "healthz_p50_ms": statistics.median(bare),
        "ratio_p50": statistics.median(waits) / statistics.median(bare),
    }


def rows(jobs: int = 200) -> list[Row]:
    """The overhead figures as table rows."""
    with running(**NULL_ENGINES, **UNREACHED_LIMITS) as url:
        f = measure(url, jobs)
    bench, healthz = "per-job overhead (null engines)", f"GET /healthz {f['healthz_p50_ms']:.1f} ms"
    return [
        Row(
            bench,
            "submit → succeeded and visible, p50",
            f["overhead_p50_ms"],
            "ms",
            f["ratio_p50"],
            healthz,
        ),
        Row(bench, "submit → succeeded and visible, p99", f["overhead_p99_ms"], "ms"),
        Row(bench, "of which queued (row made → claimed), p50", f["queued_p50_ms"], "ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    print(markdown(rows(args.jobs)))


if __name__ == "__main__":
    main()
