"""The worker's start and its pool child's life: engines checked, loaded, kept alive, closed."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from models import metrics
from models.errors import EngineUnavailable
from models.queue import JOB_QUEUE, MAINTENANCE_QUEUE
from worker import runtime, tasks
from worker.celery_app import settings
from worker.lease_keeper import LeaseKeeper

_LOGGER = logging.getLogger(__name__)

# The pool child's lease keeper, started once its engines are loaded.
_KEEPER: LeaseKeeper | None = None
_MAINTENANCE_ONLY = (
    f"WORKER_ROLE=maintenance loads no models: start it with -Q {MAINTENANCE_QUEUE} only, "
    f"never on the job queue {JOB_QUEUE!r}"
)


@celeryd_init.connect
def _refuse_unusable_engines(options: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Stops `celery worker` before it forks when an engine setting cannot work (SystemExit, as
    Celery's signal dispatch catches Exception only: status 1, one line on stderr)."""
    from worker.engines.preflight import validate_engines

    if settings.worker_role != "jobs":  # the maintenance worker loads no models
        queues = (options or {}).get("queues") or []
        if isinstance(queues, str):
            queues = queues.split(",")
        if JOB_QUEUE in queues or not queues:
            # It would take jobs it has no models for.
            raise SystemExit(f"voicechat worker not started: {_MAINTENANCE_ONLY}")
        _LOGGER.info("maintenance worker: no engines checked or loaded")
        return
    try:
        validate_engines(settings)
    except EngineUnavailable as error:
        raise SystemExit(f"voicechat worker not started: {error}") from None
    _serve_metrics()


def _serve_metrics() -> None:
    """Serves the host's figures (the pool child's, in PROMETHEUS_MULTIPROC_DIR) on
    WORKER_METRICS_PORT, for a worker apart from the API's host."""
    if not settings.worker_metrics_port:
        return
    if metrics.multiprocess_dir() is None:
        raise SystemExit(
            "voicechat worker not started: WORKER_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR "
            "(an empty folder of this host's own)"
        )
    metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)


@worker_process_init.connect
def _load_engines(**_kwargs: Any) -> None:
    """Loads and warms the engines in the pool's child, then starts its lease keeper."""
    global _KEEPER
    if settings.worker_role != "jobs":  # a prefork maintenance worker sends it too
        return
    _KEEPER = LeaseKeeper(settings)
    try:
        runtime.get_pipeline(settings)
        metrics.MODELS_LOADED.set(1)
    except Exception as error:
        # Jobs will fail with engine_unavailable and /readyz says why; the log has the trace.
        _LOGGER.exception("engines failed to load")
        runtime.record_load_error(error)
    try:
        tasks.warm_up_connections()
    except (SQLAlchemyError, RedisError, OSError) as error:  # the first job connects instead
        _LOGGER.warning("connections not warmed error=%s", type(error).__name__)
    _KEEPER.start()


@worker_process_shutdown.connect
def _stop_child(**_kwargs: Any) -> None:
    """Withdraws the child's readiness (key and gauge) and releases its engines as it exits."""
    if _KEEPER is not None:
        _KEEPER.stop()
    runtime.close_engines()
    metrics.MODELS_LOADED.set(0)
    metrics.process_gone(os.getpid())
