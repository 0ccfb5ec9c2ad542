"""The worker's Celery application: `celery -A worker.celery_app worker` starts it."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery, bootsteps
from celery.exceptions import TimeLimitExceeded
from celery.signals import (
    celeryd_init,
    task_failure,
    worker_process_init,
    worker_process_shutdown,
)
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from models import events
from models import jobs as job_rows
from models.db import make_engine, make_session_factory
from models.errors import EngineUnavailable
from models.events import JobEvents
from models.queue import JOB_QUEUE, RUN_JOB_TASK
from models.settings import Settings
from worker.reconciler import reconcile

_LOGGER = logging.getLogger(__name__)

settings = Settings.from_env()

# Pin the worker to one GPU before any CUDA library is imported (Jetson Orin / multi-GPU hosts).
if gpu := os.environ.get("WORKER_GPU", "").strip():
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu

app = Celery("voicechat", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_default_queue=JOB_QUEUE,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_time_limit,
    # Redis redelivers an unacknowledged message after this long: it exceeds the hard limit
    # (checked in Settings), so a job still running is never handed to a second worker.
    broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
    broker_connection_retry_on_startup=True,
    # Keep reconnecting through a Redis restart of any length instead of giving up after 100.
    broker_connection_max_retries=None,
    # The child loads the models before it reports up; the default 4 s would kill it.
    worker_proc_alive_timeout=600,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
)

_HEARTBEAT: Any = None


@celeryd_init.connect
def _refuse_unusable_engines(**_kwargs: Any) -> None:
    """Stops `celery worker` before it forks when an engine setting cannot work.

    Checks names, libraries and model files without loading anything (worker/engines/
    validation.py). SystemExit passes through Celery's signal dispatch, which catches Exception
    only, and ends the parent with status 1 and one line on stderr naming the setting.
    """
    from worker.engines.validation import validate_engines

    try:
        validate_engines(settings)
    except EngineUnavailable as error:
        raise SystemExit(f"voicechat worker not started: {error}") from None


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
    from worker.runtime import close_engines

    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()
    close_engines()


def publish(job_id: str) -> None:
    """Sends a job's message again (the job id is the task id, as the API sends it)."""
    app.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=JOB_QUEUE)


_PARENT_SESSIONS: sessionmaker[Session] | None = None


def _parent_sessions() -> sessionmaker[Session]:
    """Sessions for the worker's parent process, made once.

    The engine has no pool: the parent forks new children later, and they must not inherit
    open database connections; with NullPool every session opens and closes its own.
    """
    global _PARENT_SESSIONS
    if _PARENT_SESSIONS is None:
        _PARENT_SESSIONS = make_session_factory(
            make_engine(settings.database_url, poolclass=NullPool)
        )
    return _PARENT_SESSIONS


@task_failure.connect
def _recover_lost_job(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_kwargs: Any
) -> None:
    """Handles a job whose child process died, in the parent, where the task cannot.

    A child killed by the hard time limit ends its job `failed` with `timeout`. A child lost
    otherwise (OOM killer, a crash in native code) has its job released and republished: the
    next claim resumes after the last checkpoint and counts an attempt, up to MAX_ATTEMPTS.
    """
    if not isinstance(exception, TimeLimitExceeded | WorkerLostError) or not args:
        return
    job_id = str(args[0])
    with _parent_sessions()() as session:
        if isinstance(exception, TimeLimitExceeded):
            message = f"The job ran past {settings.task_time_limit} seconds."
            if job_rows.fail(session, job_id, "timeout", message):
                _LOGGER.warning("job failed in parent job_id=%s code=timeout", job_id)
                error = {"code": "timeout", "message": message}
                _events().publish(job_id, events.DONE, status="failed", error=error)
        elif job_rows.release(session, job_id, owner_prefix=f"{socket.gethostname()}:"):
            _LOGGER.warning("worker lost; job released job_id=%s", job_id)
            _events().publish(job_id, events.STATUS, status="queued")
            publish(job_id)


_PARENT_EVENTS: JobEvents | None = None


def _events() -> JobEvents:
    """The parent's writer of job event streams, made once."""
    global _PARENT_EVENTS
    if _PARENT_EVENTS is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        _PARENT_EVENTS = JobEvents(client, ttl_seconds=settings.events_ttl_seconds)
    return _PARENT_EVENTS


class Reconciler(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the reconciler on a timer in the worker's parent process (worker/reconciler.py)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.broker: Redis | None = None

    def start(self, parent: Any) -> None:
        self.broker = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.timer_ref = parent.timer.call_repeatedly(
            settings.reconcile_interval_seconds, self.run_once, priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
        if self.broker is not None:
            self.broker.close()

    def run_once(self) -> None:
        """One reconciliation pass; failures are logged and retried on the next tick."""
        assert self.broker is not None
        try:
            with _parent_sessions()() as session:
                reconcile(
                    session,
                    self.broker,
                    publish,
                    queue=JOB_QUEUE,
                    queued_after_seconds=settings.reconcile_queued_after_seconds,
                )
        except (SQLAlchemyError, RedisError, OSError, OperationalError) as error:
            _LOGGER.warning("reconcile pass failed error=%s", type(error).__name__)


app.steps["worker"].add(Reconciler)
