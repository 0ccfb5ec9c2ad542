"""The reconciler: puts jobs whose delivery was lost back on the queue.

It closes two gaps. A `running` job whose worker died stops having its lease renewed; once the
lease expires it is released and republished (its next claim counts an attempt, so a job that
kills every worker fails after `MAX_ATTEMPTS`). A `queued` job whose message never reached Redis
(the API died between commit and publish) or was lost with it (a Redis restart inside the AOF's
one-second window) is republished. Duplicate messages are harmless: the claim is a conditional
UPDATE. A job whose end was never announced (its announcer died after the terminal commit, or
Redis was down) gets its `done` event now; the log's fence keeps it to one.

A pass costs what changed since the last one, not what the queue or the history holds. Each
sent job is marked in the broker's Redis (models/queue.py), so a new job is checked by its
mark: only the jobs that came in since the last pass are read. The whole queue is read only
when a message may have been lost without its mark: the Redis server restarted (its run id
changed, or the reconciler's own state is gone with the data) or a worker left the registry
(it may have taken messages it never acknowledged, which kombu would restore only after the
visibility timeout). Messages a worker took but has not acknowledged do not count as waiting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy.orm import Session

from models import event_log, heartbeat, queries, transitions
from models import queue as queue_marks
from models.event_log import JobEvents
from models.webhooks import WebhookSender

_LOGGER = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's waiting messages in a list named after the queue,
# plus one list per priority step, "<queue>\x06\x16<n>".
_PRIORITY_SEPARATOR = "\x06\x16"
# What the last pass saw, in the broker's Redis: lost with its data, which forces a full pass.
STATE = "voicechat:reconciler"
# New jobs are read from a little before the last pass's horizon: a row's `created_at` comes
# from its API host's clock and its commit may land a moment later.
_OVERLAP_SECONDS = 300
# Marks older than this are dropped: their jobs are past every incremental window.
_MARK_KEEP_SECONDS = 86_400


@dataclass(frozen=True)
class Report:
    """What one reconciliation pass did; `full` says it read the whole queue."""

    released: tuple[str, ...]
    republished: tuple[str, ...]
    announced: tuple[str, ...] = ()
    canceled: tuple[str, ...] = ()  # expired leases of jobs asked to stop: ended, not rerun
    full: bool = False


@dataclass(frozen=True)
class Horizon:
    """What a pass saw of the broker: its server's run id, the live workers, and the newest
    creation time up to which every queued job has been checked."""

    run_id: str
    workers: frozenset[str]
    checked_until: datetime | None = None

    @classmethod
    def now(cls, broker: Redis) -> Horizon:
        """The broker as it is now (no `checked_until`)."""
        run_id = str(broker.info("server").get("run_id", ""))
        workers = frozenset(
            str(info.get("worker_id", "")) for info in heartbeat.live_workers(broker)
        )
        return cls(run_id=run_id, workers=workers)

    @classmethod
    def last(cls, broker: Redis) -> Horizon | None:
        """What the last pass saved, or None (no pass yet, or Redis lost its data)."""
        saved = broker.hgetall(STATE)
        try:
            fields = {_text(key): _text(value) for key, value in saved.items()}
            return cls(
                run_id=fields["run_id"],
                workers=frozenset(json.loads(fields["workers"])),
                checked_until=datetime.fromisoformat(fields["checked_until"]),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    def covers(self, now: Horizon) -> bool:
        """Whether no message can have been lost unmarked since this was saved: the same Redis
        server, and every worker then still alive."""
        return self.run_id == now.run_id and self.workers <= now.workers

    def save(self, broker: Redis) -> None:
        """Saves this as the last pass's horizon."""
        assert self.checked_until is not None
        broker.hset(
            STATE,
            mapping={
                "run_id": self.run_id,
                "workers": json.dumps(sorted(self.workers)),
                "checked_until": self.checked_until.isoformat(),
            },
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
    webhooks: WebhookSender,
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
        webhooks: Sends a webhook delivery (an end announced now gets its `completed` one).
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
    now = Horizon.now(broker)
    last = Horizon.last(broker)
    horizon = queries.database_time(session, -queued_after_seconds)
    full = last is None or not last.covers(now)
    lost = _lost_in_full(session, broker, queue, queued_after_seconds) if full else []
    if last is not None and not full:
        assert last.checked_until is not None
        since = last.checked_until - timedelta(seconds=_OVERLAP_SECONDS)
        lost = queue_marks.unsent(broker, queries.queued_between(session, since, horizon))
    republished = sorted(set(released) | set(lost))
    for job_id in republished:
        publish(job_id)
    Horizon(now.run_id, now.workers, horizon).save(broker)
    queue_marks.forget_marks_before(broker, _MARK_KEEP_SECONDS)
    unannounced = queries.unannounced_ends(session, older_than_seconds=queued_after_seconds)
    announced = [
        job_id
        for job_id in dict.fromkeys([*canceled, *unannounced])
        if event_log.announce_end(session, events, job_id, webhooks=webhooks)
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
    return Report(tuple(released), tuple(republished), tuple(announced), tuple(canceled), full=full)


def _lost_in_full(
    session: Session, broker: Redis, queue: str, queued_after_seconds: int
) -> list[str]:
    """The jobs queued longer than `queued_after_seconds` with no message waiting, by reading
    the whole queue: only after a restart of Redis or the loss of a worker."""
    stale = queries.queued_longer_than(session, queued_after_seconds)
    if not stale:
        return []
    present = job_ids_waiting(broker, queue)
    return [job_id for job_id in stale if job_id not in present]
