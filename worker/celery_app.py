"""The worker's Celery application: `celery -A worker.celery_app worker` starts it."""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_process_shutdown
from sqlalchemy.pool import NullPool

from models import jobs as job_rows
from models.db import make_engine, make_session_factory
from models.settings import Settings

_LOGGER = logging.getLogger(__name__)

settings = Settings.from_env()

# Pin the worker to one GPU before any CUDA library is imported (Jetson Orin / multi-GPU hosts).
if gpu := os.environ.get("WORKER_GPU", "").strip():
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu

app = Celery("voicechat", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_default_queue="voicechat",
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_time_limit,
    # Redis redelivers an unacknowledged message after this long: it must exceed the hard limit.
    broker_transport_options={"visibility_timeout": settings.task_time_limit + 60},
    broker_connection_retry_on_startup=True,
    # The child loads the models before it reports up; the default 4 s would kill it.
    worker_proc_alive_timeout=600,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
)

_HEARTBEAT: Any = None


@worker_process_init.connect
def _load_engines(**_kwargs: Any) -> None:
    """Loads and warms the engines in the pool's child, then starts its heartbeat."""
    global _HEARTBEAT
    from worker.runtime import Heartbeat, get_pipeline

    _HEARTBEAT = Heartbeat(settings)
    try:
        get_pipeline(settings)
    except Exception as error:
        # Jobs will fail with engine_unavailable and /readyz says why; the log has the trace.
        _LOGGER.exception("engines failed to load")
        from worker.runtime import record_load_error

        record_load_error(error)
    _HEARTBEAT.start()


@worker_process_shutdown.connect
def _stop_heartbeat(**_kwargs: Any) -> None:
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()


@task_failure.connect
def _record_lost_job(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_kwargs: Any
) -> None:
    """Ends a job whose child process died (hard time limit, OOM kill) instead of leaving it.

    Celery calls this in the parent process, where the task's own error handling cannot run.
    """
    if not isinstance(exception, TimeLimitExceeded | WorkerLostError) or not args:
        return
    job_id = str(args[0])
    if isinstance(exception, TimeLimitExceeded):
        code, message = "timeout", f"The job ran past {settings.task_time_limit} seconds."
    else:
        code, message = "worker_lost", "The worker process running this job died."
    # A throwaway engine without a pool: the parent forks new children later, and they must
    # not inherit open database connections.
    engine = make_engine(settings.database_url, poolclass=NullPool)
    try:
        with make_session_factory(engine)() as session:
            if job_rows.fail(session, job_id, code, message):
                _LOGGER.warning("job failed in parent job_id=%s code=%s", job_id, code)
    finally:
        engine.dispose()
