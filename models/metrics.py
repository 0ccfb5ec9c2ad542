"""The service's Prometheus figures, recorded by every process and read back as one registry.

With PROMETHEUS_MULTIPROC_DIR (the launcher sets it) each process writes files of its own there
and a scrape sums them all (prometheus_client's multiprocess mode); without it, each its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector

_LOGGER = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Prometheus's classic text format (0.0.4): what every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The folder must exist before the first figure below is made: each opens its file at once.
if _folder := os.environ.get(MULTIPROC_DIR):
    Path(_folder).mkdir(parents=True, exist_ok=True)

# A stage takes milliseconds with text in and out, minutes for a long recording on a CPU.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
NO_CODE = "none"

JOBS_FINISHED = Counter(
    "voicechat_jobs_finished",
    "Jobs that reached a terminal status, by status and error code (`none` for a success).",
    ["status", "code"],
)
STAGE_SECONDS = Histogram(
    "voicechat_stage_seconds",
    "Time one stage of a job took in its engine (transcribe, generate, synthesize).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
FIRST_AUDIO_SECONDS = Histogram(
    "voicechat_time_to_first_audio_seconds",
    "From a worker taking a job to the first sentence of its spoken reply being stored.",
    buckets=STAGE_BUCKETS,
)
# Summed over the live processes of a host: how many job workers there have their models.
MODELS_LOADED = Gauge(
    "voicechat_worker_models_loaded",
    "1 in a job worker process whose engines are loaded, else 0; summed over live processes.",
    multiprocess_mode="livesum",
)
HTTP_REQUESTS = Counter(
    "voicechat_http_requests",
    "Requests answered, by route (the URL rule, `unmatched` for none), method and status; the "
    "probes and `/metrics` are not counted.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "voicechat_http_request_seconds",
    "Time to an answer's headers, by route and method (a stream's body is not counted).",
    ["route", "method"],
)


def multiprocess_dir() -> str | None:
    """The folder the processes of this host share their figures in, if any."""
    return os.environ.get(MULTIPROC_DIR) or None


def job_finished(status: str, code: str | None) -> None:
    """Counts a job that reached a terminal `status`, failed or canceled with `code`."""
    JOBS_FINISHED.labels(status=status, code=code or NO_CODE).inc()


def _stored() -> CollectorRegistry:
    """This host's figures, summed over its processes' files, or this process's own."""
    if (folder := multiprocess_dir()) is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry


def exposition(*live: Collector) -> bytes:
    """This host's figures (or this process's), then the `live` collectors', in the text format."""
    now = CollectorRegistry()
    for collector in live:
        now.register(collector)
    return generate_latest(_stored()) + generate_latest(now)


def process_gone(pid: int) -> None:
    """Drops a process's live gauges (its counters and histograms stay in the sums)."""
    if (folder := multiprocess_dir()) is not None:
        multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]


def serve(host: str, port: int) -> bool:
    """Serves this host's figures from a thread; False when another process holds the port."""
    try:
        start_http_server(port, addr=host, registry=_stored())
    except OSError as error:
        _LOGGER.warning("metrics not served port=%d error=%s", port, error.strerror)
        return False
    _LOGGER.info("metrics served address=%s:%d", host, port)
    return True
