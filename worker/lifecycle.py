"""The worker's start and its pool child's life: engines checked, loaded, kept alive, closed."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown

from models.errors import EngineUnavailable
from worker import runtime
from worker.celery_app import settings
from worker.lease_keeper import LeaseKeeper

_LOGGER = logging.getLogger(__name__)

# A maintenance worker (`-Q maintenance`: webhook deliveries) loads and checks no engines.
# Minimal on this branch; the retention branch brings the same switch.
MAINTENANCE = os.environ.get("WORKER_ROLE", "").strip() == "maintenance"

# The pool child's lease keeper, started once its engines are loaded.
_KEEPER: LeaseKeeper | None = None


@celeryd_init.connect
def _refuse_unusable_engines(**_kwargs: Any) -> None:
    """Stops `celery worker` before it forks when an engine setting cannot work.

    Checks names, libraries and model files without loading anything (worker/engines/
    validation.py). SystemExit passes through Celery's signal dispatch, which catches Exception
    only, and ends the parent with status 1 and one line on stderr naming the setting.
    """
    if MAINTENANCE:
        return
    from worker.engines.validation import validate_engines

    try:
        validate_engines(settings)
    except EngineUnavailable as error:
        raise SystemExit(f"voicechat worker not started: {error}") from None


@worker_process_init.connect
def _load_engines(**_kwargs: Any) -> None:
    """Loads and warms the engines in the pool's child, then starts its lease keeper."""
    global _KEEPER
    if MAINTENANCE:
        return
    _KEEPER = LeaseKeeper(settings)
    try:
        runtime.get_pipeline(settings)
    except Exception as error:
        # Jobs will fail with engine_unavailable and /readyz says why; the log has the trace.
        _LOGGER.exception("engines failed to load")
        runtime.record_load_error(error)
    _KEEPER.start()


@worker_process_shutdown.connect
def _stop_child(**_kwargs: Any) -> None:
    """Withdraws the child's readiness and releases its engines as the child exits."""
    if _KEEPER is not None:
        _KEEPER.stop()
    runtime.close_engines()
