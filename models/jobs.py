"""Reads and state changes of job rows; every transition is a conditional UPDATE on the row."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.errors import InvalidCursor
from models.job import Job, JobStatus, Stage, utcnow

TERMINAL = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value)


@dataclass(frozen=True)
class Page:
    """One page of jobs, newest first, and the cursor of the next page if there is one."""

    jobs: Sequence[Job]
    next_cursor: str | None


def encode_cursor(job: Job) -> str:
    """Returns the opaque cursor that continues a listing after `job`."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parses a cursor made by `encode_cursor`.

    Raises:
        InvalidCursor: The cursor was not made by this service.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("The cursor is not one this service made.") from None
    if created_at.tzinfo is None or not job_id.isalnum():
        raise InvalidCursor("The cursor is not one this service made.")
    return created_at, job_id


def list_jobs(
    session: Session, *, status: JobStatus | None, limit: int, cursor: str | None
) -> Page:
    """Lists jobs newest first, `limit` at a time, by keyset pagination on (created_at, id)."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status.value)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(jobs=rows, next_cursor=encode_cursor(rows[-1]) if more and rows else None)


def claim(session: Session, job_id: str) -> bool:
    """Moves a queued job to running, once; returns whether this caller won it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.RUNNING.value, started_at=now, attempts=Job.attempts + 1)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def set_stage(session: Session, job_id: str, stage: Stage, **checkpoint: Any) -> None:
    """Records the stage a running job entered, with the results of the stage before it."""
    _update_running(session, job_id, stage=stage.value, **checkpoint)


def record(session: Session, job_id: str, **checkpoint: Any) -> None:
    """Records results of a running job's stage without changing the stage."""
    _update_running(session, job_id, **checkpoint)


def succeed(session: Session, job_id: str, **results: Any) -> bool:
    """Marks a running job succeeded with its final results; returns whether it changed."""
    return _finish(session, job_id, JobStatus.SUCCEEDED, **results)


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    """Marks a job that is not yet terminal as failed with a machine code and a message."""
    return _finish(session, job_id, JobStatus.FAILED, error_code=code, error_message=message)


def _update_running(session: Session, job_id: str, **values: Any) -> None:
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value).values(**values)
    )
    session.commit()


def _finish(session: Session, job_id: str, status: JobStatus, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(TERMINAL))
        .values(status=status.value, stage=None, finished_at=utcnow(), **values)
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))
