"""The job queue both sides share: the task's name, its queue, and the one way a job is sent."""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError

from models.errors import BrokerUnavailable

_LOGGER = logging.getLogger(__name__)

RUN_JOB_TASK = "worker.run_job"
JOB_QUEUE = "voicechat"
# Housekeeping (retention, webhook deliveries): its own worker, which loads no models, so a
# sweep never waits behind a job and a job never behind a sweep.
MAINTENANCE_QUEUE = "maintenance"
RETENTION_TASK = "worker.sweep_retention"


def send_job(celery: Celery, job_id: str) -> None:
    """Sends a job's message by task name, so the sender needs none of the worker's code.

    The job id doubles as the task id, so the reconciler can tell which jobs have a message in
    the broker, and a job sent again (after its worker was lost) keeps its id.
    """
    celery.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=JOB_QUEUE)


class JobQueue:
    """The web process's Celery client: it only sends; it has no tasks and no result backend."""

    def __init__(self, broker_url: str) -> None:
        self.celery = Celery("voicechat-api", broker=broker_url, set_as_current=False)
        self.celery.conf.update(
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
            task_ignore_result=True,
            # A publish that cannot reach Redis fails fast, so the request gets a 503 in
            # seconds instead of hanging on kombu's default retry schedule.
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0.1,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        )

    def enqueue(self, job_id: str) -> None:
        """Publishes a job for the worker.

        Raises:
            BrokerUnavailable: Redis could not take the message.
        """
        try:
            send_job(self.celery, job_id)
        except (OperationalError, OSError) as error:
            _LOGGER.warning("enqueue failed job_id=%s error=%s", job_id, type(error).__name__)
            raise BrokerUnavailable("The job queue is unreachable; try again shortly.") from error
