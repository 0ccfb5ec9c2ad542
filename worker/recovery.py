"""The worker parent's recovery of lost jobs: dead children's jobs, and the reconciler's timer."""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import bootsteps
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from models import event_log, transitions
from models.queue import JOB_QUEUE, send_job
from worker import clients
from worker.celery_app import app, settings
from worker.lease_keeper import children_prefix
from worker.reconciler import reconcile
from worker.webhooks import queue_delivery

_LOGGER = logging.getLogger(__name__)


def publish(job_id: str) -> None:
    """Sends a job's message again, as the API first sent it."""
    send_job(app, job_id, clients.events().redis)


@task_failure.connect
def _recover_lost_job(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_kwargs: Any
) -> None:
    """In the parent, ends a job whose child died: `timeout` past the hard limit, else released
    and republished (OOM killer, a native crash); `canceled` if it was asked to stop."""
    if not isinstance(exception, TimeLimitExceeded | WorkerLostError) or not args:
        return
    job_id = str(args[0])
    mine = children_prefix()  # fenced: only a job one of this worker's children still held
    with clients.parent_sessions()() as session:
        if transitions.cancel_held_by(session, job_id, mine):
            _LOGGER.warning("worker lost; job canceled as asked job_id=%s", job_id)
            event_log.announce_end(session, clients.events(), job_id, webhooks=queue_delivery)
            return
        if isinstance(exception, TimeLimitExceeded):
            message = f"The job ran past {settings.task_time_limit} seconds."
            if transitions.fail_held_by(session, job_id, mine, "timeout", message):
                _LOGGER.warning("job failed in parent job_id=%s code=timeout", job_id)
                event_log.announce_end(session, clients.events(), job_id, webhooks=queue_delivery)
            return
        attempt = transitions.release_held_by(session, job_id, mine)
        if attempt is not None:
            _LOGGER.warning("worker lost; job released job_id=%s attempt=%d", job_id, attempt)
            clients.events().requeued(job_id, attempt)
            publish(job_id)


class Reconciler(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the reconciler on a timer in the worker's parent process (worker/reconciler.py)."""

    requires = {"celery.worker.components:Timer"}
    timer_ref: Any = None
    broker: Redis | None = None

    def start(self, parent: Any) -> None:
        """Connects to the broker and starts the timer (`RECONCILE_INTERVAL_SECONDS`)."""
        self.broker = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.timer_ref = parent.timer.call_repeatedly(
            settings.reconcile_interval_seconds, self.run_once, priority=10
        )

    def stop(self, parent: Any) -> None:
        """Cancels the timer and closes the broker connection."""
        if self.timer_ref is not None:
            self.timer_ref.cancel()
        if self.broker is not None:
            self.broker.close()

    def run_once(self) -> None:
        """One reconciliation pass; failures are logged and retried on the next tick."""
        assert self.broker is not None
        try:
            with clients.parent_sessions()() as session:
                reconcile(
                    session,
                    self.broker,
                    clients.events(),
                    publish,
                    webhooks=queue_delivery,
                    queue=JOB_QUEUE,
                    queued_after_seconds=settings.reconcile_queued_after_seconds,
                )
        except (SQLAlchemyError, RedisError, OSError, OperationalError) as error:
            _LOGGER.warning("reconcile pass failed error=%s", type(error).__name__)


app.steps["worker"].add(Reconciler)
