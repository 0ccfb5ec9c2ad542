"""Erasing a job (`DELETE /v1/jobs/{id}`): stopped if it runs, and nothing of it kept."""

from __future__ import annotations

import logging

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from models import cancel_signal, storage
from models.errors import JobNotFound, ServiceUnavailable
from models.event_log import JobEvents
from models.settings import Settings
from models.tables import IdempotencyRecord, Job, Turn

_LOGGER = logging.getLogger(__name__)


def erase(session: Session, job: Job) -> None:
    """Erases a job: its event stream, its row with its turns, idempotency key and webhook
    deliveries, and its files in both stores; a queued or running one is told to stop.

    An attempt still running brings nothing back: its next event is refused and its row writes
    match no row, so it learns it lost its lease and deletes the files it wrote meanwhile (one
    killed before that leaves orphans, which retention deletes).
    """
    job_id, scope = job.id, job.api_key_id or ""
    settings: Settings = current_app.extensions["voicechat.settings"]
    events: JobEvents = current_app.extensions["voicechat.events"]
    redis: Redis = current_app.extensions["voicechat.redis"]
    # As long as a cancel's key: past the longest any attempt of the job may still run.
    hold = settings.worker_hold_limit_seconds
    try:
        events.erase(job_id, fence_seconds=hold)
    except (RedisError, OSError) as error:
        raise ServiceUnavailable("Redis is unreachable; try again shortly.") from error
    if not job.job_status.terminal:  # stops at its next token, before a file is written
        cancel_signal.raise_flag(redis, job_id, ttl_seconds=hold)
    # The row first: on PostgreSQL this waits for a `succeed` in flight, whose turns the
    # statements below then see (one after it finds no row and adds none).
    files = (Job.id, Job.attempts, Job.input_audio_file, Job.reply_format)
    erased = session.execute(
        delete(Job).where(Job.id == job_id).returning(*files, Job.conversation_id)
    ).first()
    if erased is None:
        session.rollback()
        raise JobNotFound(f"No job has the id {job_id!r}.")
    if erased.conversation_id is not None:
        turns = (Turn.conversation_id == erased.conversation_id, Turn.job_id == job_id)
        session.execute(delete(Turn).where(*turns))
    # Its key is scoped by its caller (the primary key's prefix): no scan of every key.
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.job_id == job_id
        )
    )
    session.commit()  # its webhook deliveries go with the row (ON DELETE CASCADE)
    uploads: storage.Store = current_app.extensions["voicechat.uploads"]
    storage.delete_job_files(erased, uploads, current_app.extensions["voicechat.results"])
    _LOGGER.info("job erased job_id=%s", job_id)
