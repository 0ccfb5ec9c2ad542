"""The reconciler: puts jobs whose delivery was lost back on the queue.

It closes two gaps. A `running` job whose worker died stops having its lease renewed; once the
lease expires it is released and republished (its next claim counts an attempt, so a job that
kills every worker fails after `MAX_ATTEMPTS`). A `queued` job whose message never reached Redis
(the API died between commit and publish) or was lost with it (a Redis restart inside the AOF's
one-second window) is republished when no message for it is waiting in the broker. Messages a
worker took but has not acknowledged do not count: their worker may be dead, and kombu would only
restore them after the visibility timeout. Duplicate messages are harmless: the claim is a
conditional UPDATE. A job whose end was never announced (its announcer died after the terminal
commit, or Redis was down) gets its `done` event now; the log's fence keeps it to one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import Redis
from sqlalchemy.orm import Session

from models import event_log, queries, transitions
from models.event_log import JobEvents

_LOGGER = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's waiting messages in a list named after the queue,
# plus one list per priority step, "<queue>\x06\x16<n>".
_PRIORITY_SEPARATOR = "\x06\x16"


@dataclass(frozen=True)
class Report:
    """What one reconciliation pass did."""

    released: tuple[str, ...]
    republished: tuple[str, ...]
    announced: tuple[str, ...] = ()
    canceled: tuple[str, ...] = ()  # expired leases of jobs asked to stop: ended, not rerun


def _task_ids(payloads: Iterable[bytes | str]) -> set[str]:
    ids = set()
    for raw in payloads:
        try:
            ids.add(str(json.loads(raw)["headers"]["id"]))
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not a Celery message: not ours to judge
    return ids


def job_ids_waiting(client: Redis, queue: str) -> set[str]:
    """Ids of the jobs that have a message waiting in `queue`.

    The API publishes each job with the job id as the Celery task id.
    """
    keys = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in range(10))]
    waiting: list[bytes | str] = []
    for key in keys:
        waiting.extend(client.lrange(key, 0, -1))
    return _task_ids(waiting)


def reconcile(
    session: Session,
    broker: Redis,
    events: JobEvents,
    publish: Callable[[str], None],
    *,
    queue: str,
    queued_after_seconds: int,
) -> Report:
    """Runs one pass: releases expired leases (ending `canceled` those asked to stop),
    republishes jobs missing from the broker, and announces ends that were never announced.

    Args:
        session: A database session.
        broker: The Redis the jobs are queued in.
        events: The job event log: a released job's stream says it is queued again.
        publish: Sends the message for a job id.
        queue: The queue's name.
        queued_after_seconds: How long a job may stay queued with no message before it is
            republished (covers the moment between the API's commit and its publish).

    Returns:
        The ids released, republished, announced and canceled.
    """
    released, canceled = [], []
    for job_id, attempt in queries.expired_leases(session):
        if transitions.cancel_expired(session, job_id, attempt):
            canceled.append(job_id)  # its `done` is announced with the other ends below
        elif transitions.release_expired(session, job_id, attempt):
            released.append(job_id)
            events.requeued(job_id, attempt)
    stale = set(released) | set(queries.queued_longer_than(session, queued_after_seconds))
    republished = []
    if stale:
        present = job_ids_waiting(broker, queue)
        for job_id in sorted(stale - present):
            publish(job_id)
            republished.append(job_id)
    unannounced = queries.unannounced_ends(session, older_than_seconds=queued_after_seconds)
    announced = [
        job_id
        for job_id in dict.fromkeys([*canceled, *unannounced])
        if event_log.announce_end(session, events, job_id)
    ]
    if released or republished or announced:
        _LOGGER.warning(
            "reconciled released=%d republished=%d announced=%d canceled=%d ids=%s",
            len(released),
            len(republished),
            len(announced),
            len(canceled),
            ",".join(republished),
        )
    return Report(tuple(released), tuple(republished), tuple(announced), tuple(canceled))
