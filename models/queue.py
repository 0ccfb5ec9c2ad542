"""The job queue both sides share: the task's name, its queue, and the one way a job is sent."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
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


def send_job(celery: Celery, job_id: str, broker: Redis) -> int:
    """Sends a job's message by task name and marks the job sent in one MULTI on the broker's
    Redis (never one without the other); returns the number of jobs waiting, this one included.

    The LPUSH and its envelope are kombu's Redis transport's own, written here because kombu's
    publish makes a Redis client per message and cannot share a round trip with the mark
    (profiled: a fifth of a submit's CPU).
    """
    # ignore_result as send_task leaves it: None, the task's own setting.
    task = celery.amqp.as_task_v2(job_id, RUN_JOB_TASK, args=[job_id], ignore_result=None)
    envelope = {
        "body": base64.b64encode(json.dumps(task.body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,  # persistent
            "delivery_info": {"exchange": "", "routing_key": JOB_QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    with broker.pipeline() as pipeline:
        pipeline.lpush(JOB_QUEUE, json.dumps(envelope))
        pipeline.zadd(SENT, {job_id: time.time()})
        depth, _ = pipeline.execute()
    return int(depth)


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
    """Jobs waiting for a worker (not taken, running or prefetched): kombu's one list, no
    priorities being sent."""
    return int(client.llen(JOB_QUEUE))


def send_webhook(celery: Celery, job_id: str, event: str) -> None:
    """Queues the first delivery attempt of a job's webhook event (the task retries itself)."""
    celery.send_task(DELIVER_WEBHOOK_TASK, args=[job_id, event], queue=MAINTENANCE_QUEUE)


class JobQueue:
    """The web process's Celery client: it only sends; it has no tasks and no result backend."""

    def __init__(self, broker_url: str, broker: Redis | None = None) -> None:
        # Jobs are pushed on the broker's Redis: the API passes its own client of it.
        self.broker = broker if broker is not None else Redis.from_url(broker_url)
        # The queue's depth as last read or pushed, and when (time.monotonic()).
        self.depth_seen = (0, float("-inf"))
        self.celery = Celery("voicechat-api", broker=broker_url, set_as_current=False)
        self.celery.conf.update(
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
            task_ignore_result=True,
            # A webhook that cannot reach Redis fails fast, so the caller hears of it in seconds
            # instead of hanging on kombu's default retry schedule.
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0.1,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        )

    def warm(self) -> None:
        """Connects now and builds Celery's message machinery, so the first submit pays neither."""
        self.broker.ping()
        self.celery.amqp.as_task_v2("warm-up", RUN_JOB_TASK)

    def enqueue(self, job_id: str) -> None:
        """Publishes a job for the worker (BrokerUnavailable when Redis cannot take it)."""
        try:
            self.depth_seen = (send_job(self.celery, job_id, self.broker), time.monotonic())
        except (RedisError, OSError) as error:
            _LOGGER.warning("enqueue failed job_id=%s error=%s", job_id, type(error).__name__)
            raise BrokerUnavailable("The job queue is unreachable; try again shortly.") from error

    def waiting(self) -> int:
        """The jobs waiting for a worker (`waiting_jobs`), remembered as the depth seen."""
        self.depth_seen = (waiting_jobs(self.broker), time.monotonic())
        return self.depth_seen[0]

    def send_webhook(self, job_id: str, event: str) -> None:
        """Queues the first delivery attempt of a job's webhook event (BrokerUnavailable)."""
        try:
            send_webhook(self.celery, job_id, event)
        except (OperationalError, OSError) as error:
            raise BrokerUnavailable("The job queue is unreachable.") from error
