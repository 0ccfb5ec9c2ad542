"""The job queue both sides share: the task's name, its queue, and the one way a job is sent."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError

from models.errors import BrokerUnavailable

_LOGGER = logging.getLogger(__name__)

RUN_JOB_TASK = "worker.run_job"
JOB_QUEUE = "voicechat"
# Every job whose message was sent, scored by when: kept in the broker's own Redis, so the
# marks are lost exactly when the messages may have been (a restart, a flush), and the
# reconciler checks a new job's mark instead of reading the whole queue (worker/reconciler.py).
SENT = "voicechat:sent"
# Housekeeping (retention, webhook deliveries): its own worker, which loads no models, so a
# sweep never waits behind a job and a job never behind a sweep.
MAINTENANCE_QUEUE = "maintenance"
DELIVER_WEBHOOK_TASK = "worker.deliver_webhook"
RETENTION_TASK = "worker.sweep_retention"


def send_job(celery: Celery, job_id: str, marks: Redis) -> None:
    """Sends a job's message by task name (no worker code needed) and marks the job sent.

    The job id is the task id: the reconciler sees which jobs have a message, a resent job keeps
    its id. A mark not written costs at most a harmless second message (the claim is conditional).
    """
    celery.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=JOB_QUEUE)
    try:
        marks.zadd(SENT, {job_id: time.time()})
    except (RedisError, OSError) as error:
        _LOGGER.warning("sent mark lost job_id=%s error=%s", job_id, type(error).__name__)


def unsent(client: Redis, job_ids: Sequence[str]) -> list[str]:
    """The ids among `job_ids` that have no sent mark: their message may never have left."""
    if not job_ids:
        return []
    scores = client.zmscore(SENT, list(job_ids))
    return [job_id for job_id, score in zip(job_ids, scores, strict=True) if score is None]


def forget_marks_before(client: Redis, seconds_ago: float) -> None:
    """Drops the marks older than `seconds_ago`: jobs that old are past every check."""
    client.zremrangebyscore(SENT, "-inf", time.time() - seconds_ago)


def waiting_jobs(client: Redis) -> int:
    """Jobs waiting for a worker, in O(1): the length of kombu's one list (no priorities are sent).

    A job a worker has taken (running, or prefetched) is not counted.
    """
    return int(client.llen(JOB_QUEUE))


def send_webhook(celery: Celery, job_id: str, event: str) -> None:
    """Sends the first delivery attempt of a job's webhook event to the maintenance queue, by
    name (the task retries itself)."""
    celery.send_task(DELIVER_WEBHOOK_TASK, args=[job_id, event], queue=MAINTENANCE_QUEUE)


class JobQueue:
    """The web process's Celery client: it only sends; it has no tasks and no result backend."""

    def __init__(self, broker_url: str, marks: Redis | None = None) -> None:
        # The sent marks go to the broker's Redis: the API passes its own client of it.
        self.marks = marks if marks is not None else Redis.from_url(broker_url)
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

    def warm(self) -> None:
        """Connects the publisher now, so the first submit pays no connection set-up."""
        with self.celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            # kombu declares a queue on its first publish (a few Redis commands); now instead.
            producer.maybe_declare(self.celery.amqp.queues[JOB_QUEUE])
        # send_task loads the (disabled) result backend on its first call: 18 ms, profiled.
        backend = self.celery.backend
        _LOGGER.debug("publisher ready backend=%s", type(backend).__name__)
        self.marks.ping()

    def enqueue(self, job_id: str) -> None:
        """Publishes a job for the worker (BrokerUnavailable when Redis cannot take it)."""
        try:
            send_job(self.celery, job_id, self.marks)
        except (OperationalError, OSError) as error:
            _LOGGER.warning("enqueue failed job_id=%s error=%s", job_id, type(error).__name__)
            raise BrokerUnavailable("The job queue is unreachable; try again shortly.") from error

    def send_webhook(self, job_id: str, event: str) -> None:
        """Queues the first delivery attempt of a job's webhook event (BrokerUnavailable)."""
        try:
            send_webhook(self.celery, job_id, event)
        except (OperationalError, OSError) as error:
            raise BrokerUnavailable("The job queue is unreachable.") from error
