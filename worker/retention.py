"""Retention: finished jobs' audio deleted after AUDIO_TTL_SECONDS (the job kept, marked expired),
job rows and conversations purged after their own TTLs, and what crashes left behind swept.

Each pass (Celery beat, maintenance worker) does bounded work through indexes, never touches a
queued or running job, and is safe beside another: every delete is of what is there, every mark
conditional.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Row, and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from models import event_log, storage
from models.queue import MAINTENANCE_QUEUE, RETENTION_TASK
from models.tables import Conversation, IdempotencyRecord, Job, Turn, WebhookDelivery, utcnow
from models.transitions import TERMINAL, database_clock, rowcount
from worker import clients
from worker.celery_app import app, settings

_LOGGER = logging.getLogger(__name__)

# The most rows (or files) of each kind one pass handles; a full batch sends the next pass at once.
BATCH = 500
# A file younger than this may belong to a write in progress (an upload is stored before its
# row is committed): never an orphan yet.
ORPHAN_AGE = timedelta(hours=1)


# What a pass reads of a job: plain values, still there after the session's transaction ends.
_FILE_COLUMNS = (Job.id, Job.attempts, Job.input_audio_file, Job.reply_format, Job.expired_at)


def _finished(session: Session, ttl_seconds: int, *where: ColumnElement[bool]) -> list[Row[Any]]:
    query = select(*_FILE_COLUMNS).where(
        *where, Job.finished_at < database_clock(session, -ttl_seconds), Job.status.in_(TERMINAL)
    )
    return list(session.execute(query.order_by(Job.finished_at).limit(BATCH)))


def expire_audio(
    session: Session, uploads: storage.Store, results: storage.Store, ttl_seconds: int
) -> int:
    """Marks up to `BATCH` jobs finished over `ttl_seconds` ago expired, then deletes their files
    (marked first: the API answers 410, never half-deleted audio; `sweep_orphans` removes what a
    pass cut short leaves); returns how many."""
    unexpired = Job.expired_at.is_(None)  # ix_jobs_unexpired_finished_at
    jobs = _finished(session, ttl_seconds, unexpired)
    if not jobs:
        return 0
    ids = [job.id for job in jobs]
    session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.expired_at.is_(None))
        .values(expired_at=database_clock(session))
    )
    session.commit()
    for job in jobs:
        storage.delete_job_files(job, uploads, results)
    _LOGGER.info("audio expired jobs=%d", len(jobs))
    return len(jobs)


def purge_jobs(
    session: Session,
    uploads: storage.Store,
    results: storage.Store,
    redis: Redis,
    ttl_seconds: int,
) -> int:
    """Deletes up to `BATCH` jobs finished over `ttl_seconds` ago (their files, event streams,
    idempotency keys and webhook deliveries, then the rows); returns how many."""
    jobs = _finished(session, ttl_seconds)  # ix_jobs_finished_at
    if not jobs:
        return 0
    session.rollback()  # no transaction held open while files are deleted
    for job in jobs:
        if job.expired_at is None:
            storage.delete_job_files(job, uploads, results)
    ids = [job.id for job in jobs]
    # Files and streams before the rows: a pass cut short finds the rows again next time.
    try:
        redis.delete(*[key for i in ids for key in (event_log.key(i), event_log.fence_key(i))])
    except RedisError as error:  # the streams expire by themselves (EVENTS_TTL_SECONDS)
        _LOGGER.warning(
            "event streams not deleted jobs=%d error=%s", len(ids), type(error).__name__
        )
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.job_id.in_(ids)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids), Job.status.in_(TERMINAL)))
    session.commit()
    _LOGGER.info("jobs purged jobs=%d", len(ids))
    return len(ids)


def purge_abandoned_keys(session: Session, ttl_seconds: int) -> int:
    """Deletes `Idempotency-Key`s older than `ttl_seconds` that never got their job (the first
    request died in flight; the others go with their job's row); returns how many."""
    result = session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.job_id.is_(None),
            IdempotencyRecord.created_at < database_clock(session, -ttl_seconds),
        )
    )
    session.commit()
    return rowcount(result)


def purge_conversations(session: Session, ttl_seconds: int) -> int:
    """Deletes up to `BATCH` conversations idle for `ttl_seconds` (no turn, no job since, none
    unfinished) with their turns (cascaded); returns how many. Kept jobs lose `conversation_id`."""
    cutoff = database_clock(session, -ttl_seconds)
    idle = and_(
        Conversation.created_at < cutoff,
        ~exists().where(Turn.conversation_id == Conversation.id, Turn.created_at >= cutoff),
        ~exists().where(
            Job.conversation_id == Conversation.id,
            or_(Job.created_at >= cutoff, Job.status.not_in(TERMINAL)),
        ),
    )
    ids = list(session.scalars(select(Conversation.id).where(idle).limit(BATCH)))
    if not ids:
        return 0
    # Idleness is checked again in the DELETE itself: a job may have joined one since the read.
    result = session.execute(delete(Conversation).where(Conversation.id.in_(ids), idle))
    session.commit()
    purged = rowcount(result)
    _LOGGER.info("conversations purged conversations=%d", purged)
    return purged


def sweep_orphans(session: Session, stores: Iterable[storage.Store]) -> tuple[int, int]:
    """Deletes, in each store, files over `ORPHAN_AGE` old whose job has no row or has expired
    (up to `BATCH`), and partial writes a crash left; returns both counts."""
    cutoff = utcnow() - ORPHAN_AGE
    orphans = partial = 0
    for store in stores:
        partial += store.sweep_partial(cutoff)
        listing = store.names_before(cutoff)
        while names := list(itertools.islice(listing, BATCH)):
            owners = {name: storage.job_id_of(name) for name in names}
            wanted = {job_id for job_id in owners.values() if job_id}
            kept = set(
                session.scalars(select(Job.id).where(Job.id.in_(wanted), Job.expired_at.is_(None)))
            )
            session.rollback()  # no transaction left open while files are deleted
            for name, job_id in owners.items():
                if job_id is not None and job_id not in kept and orphans < BATCH:
                    store.delete(name)
                    orphans += 1
            if orphans >= BATCH:
                return orphans, partial
    return orphans, partial


@app.task(name=RETENTION_TASK, acks_late=False)
def sweep_retention() -> None:
    """Runs one retention pass; when a batch was full, sends the next pass at once."""
    stores = clients.stores()
    uploads, results = stores.uploads, stores.results
    with clients.sessions()() as session:
        expired = expire_audio(session, uploads, results, settings.audio_ttl_seconds)
        jobs = purge_jobs(session, uploads, results, clients.redis(), settings.job_ttl_seconds)
        conversations = purge_conversations(session, settings.conversation_ttl_seconds)
        orphans, partial = sweep_orphans(session, (uploads, results))
        keys = purge_abandoned_keys(session, settings.idempotency_ttl_seconds)
    _LOGGER.info(
        "retention sweep done expired=%d purged_jobs=%d purged_conversations=%d orphans=%d "
        "partial_files=%d abandoned_keys=%d",
        expired,
        jobs,
        conversations,
        orphans,
        partial,
        keys,
    )
    # abandoned_keys is one unbounded DELETE: never a reason for another pass.
    if max(expired, jobs, conversations, orphans) >= BATCH:
        sweep_retention.apply_async(queue=MAINTENANCE_QUEUE)
