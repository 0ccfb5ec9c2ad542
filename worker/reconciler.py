"""The reconciler: releases expired leases, republishes jobs whose message was lost, announces
ends never announced (the claim's conditional UPDATE makes a duplicate message harmless).

Sent jobs are marked in the broker (models/queue.py), so a pass reads only new jobs; the whole
queue is read only when a message may have been lost unmarked: Redis restarted, or a worker left
(its unacknowledged messages return only after the visibility timeout).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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
    """What one reconciliation pass did; `full`: it read the whole queue."""

    released: tuple[str, ...]
    republished: tuple[str, ...]
    announced: tuple[str, ...] = ()
    canceled: tuple[str, ...] = ()  # expired leases of jobs asked to stop: ended, not rerun
    full: bool = False


@dataclass(frozen=True)
class Horizon:
    """A pass's view of the broker: run id, live workers, up to when queued jobs are checked."""

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
        """Whether no message can be lost unmarked since: same Redis, all its workers alive."""
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


def job_ids_waiting(client: Redis, queue: str) -> set[str]:
    """Ids of the jobs with a message waiting (not taken by a worker) in `queue`."""
    ids = set()
    for key in [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in range(10))]:
        for raw in client.lrange(key, 0, -1):
            try:
                ids.add(str(json.loads(raw)["headers"]["id"]))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not a Celery message: not ours to judge
    return ids


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
    """One pass; a job queued under `queued_after_seconds` is not yet missing (the API may be
    about to publish it)."""
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
    if full:  # jobs queued past `queued_after_seconds` without a message in the whole queue
        stale = queries.queued_longer_than(session, queued_after_seconds)
        present = job_ids_waiting(broker, queue) if stale else set()
        lost = [job_id for job_id in stale if job_id not in present]
    else:
        assert last is not None and last.checked_until is not None
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
