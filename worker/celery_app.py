"""The worker's Celery application and its configuration: `celery -A worker.celery_app worker`."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging

from models.logging_config import configure
from models.queue import DELIVER_WEBHOOK_TASK, JOB_QUEUE, MAINTENANCE_QUEUE, RETENTION_TASK
from models.settings import Settings

settings = Settings.from_env()

# Pin the worker to one GPU before any CUDA library is imported (Jetson Orin / multi-GPU hosts).
if gpu := os.environ.get("WORKER_GPU", "").strip():
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu

# `include`, as Celery's docs advise for signal handlers: the worker imports these before it sends
# `celeryd_init` and builds its bootsteps (`loader.init_worker()` comes first), so they are in time.
app = Celery(
    "voicechat",
    broker=settings.redis_url,
    include=[
        "worker.tasks",
        "worker.lifecycle",
        "worker.recovery",
        "worker.retention",
        "worker.webhooks",
    ],
)
app.conf.update(
    broker_transport="worker.broker:Transport",  # kombu's Redis transport, one client a channel
    task_default_queue=JOB_QUEUE,
    task_routes={
        DELIVER_WEBHOOK_TASK: {"queue": MAINTENANCE_QUEUE},
        RETENTION_TASK: {"queue": MAINTENANCE_QUEUE},
    },
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
    # Housekeeping goes to the maintenance worker (`-Q maintenance`, WORKER_ROLE=maintenance),
    # never to a job worker (`-Q voicechat`), which loads models and runs one job at a time.
    # Celery beat (one per deployment) sends these; a pass not taken within its interval is
    # dropped (`expires`), so a stopped maintenance worker does not come back to a pile of them.
    beat_schedule={
        "retention": {
            "task": RETENTION_TASK,
            "schedule": float(settings.retention_interval_seconds),
            "options": {
                "queue": MAINTENANCE_QUEUE,
                "expires": float(settings.retention_interval_seconds),
            },
        },
    },
)


@celeryd_init.connect  # before the worker's privilege check warns, which precedes Celery's set-up
@setup_logging.connect
def _log_lines(loglevel: int | str | None = None, **_kwargs: Any) -> None:
    """Every Celery process logs through the service's handler; this receiver replaces Celery's."""
    configure(settings.log_format, loglevel or "INFO")
