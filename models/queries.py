"""Reads of job and conversation rows: listings with keyset cursors, and the reconciler's scans."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select
from sqlalchemy.orm import Session

from models.errors import InvalidCursor
from models.tables import Job, JobStatus, Message, Turn
from models.transitions import TERMINAL, database_clock


@dataclass(frozen=True)
class Page:
    """One page of jobs, newest first, and the cursor of the next page if there is one."""

    jobs: Sequence[Job]
    next_cursor: str | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# A cursor: the last job's creation in microseconds since 1970 (16 digits reach the year 2286,
# within what a datetime holds) and its id. The document declares this pattern, and every string
# it matches is a cursor `decode_cursor` takes, so the two cannot disagree (issue 20).
CURSOR_PATTERN = "^[0-9]{1,16}-[0-9a-f]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(job: Job) -> str:
    """Returns the cursor that continues a listing after `job`."""
    return f"{(job.created_at - _EPOCH) // _MICROSECOND}-{job.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parses a cursor of `CURSOR_PATTERN`'s shape, or raises InvalidCursor."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursor("The cursor is not one this service made.")
    micros, _, job_id = cursor.partition("-")
    return _EPOCH + int(micros) * _MICROSECOND, job_id


def list_jobs(
    session: Session,
    *,
    owner: str | None,
    status: JobStatus | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """`owner`'s jobs (None: the open ones), newest first, keyset-paged on (created_at, id)."""
    owned = Job.api_key_id.is_(None) if owner is None else Job.api_key_id == owner
    query = select(Job).where(owned).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
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


def expired_leases(session: Session, limit: int = 100) -> list[tuple[str, int]]:
    """(job id, attempt) of running jobs whose lease expired by the database's clock."""
    query = (
        select(Job.id, Job.attempts)
        .where(
            Job.status == JobStatus.RUNNING.value,
            Job.lease_expires_at < database_clock(session),
        )
        .limit(limit)
    )
    return [(job_id, attempt) for job_id, attempt in session.execute(query)]


def _queued_ids(session: Session, limit: int, *created: ColumnElement[bool]) -> list[str]:
    """Ids of queued jobs whose creation time meets `created`, oldest first."""
    query = select(Job.id).where(Job.status == JobStatus.QUEUED.value, *created)
    return list(session.scalars(query.order_by(Job.created_at).limit(limit)))


def queued_longer_than(session: Session, seconds: float, limit: int = 1000) -> list[str]:
    """Ids of jobs queued for more than `seconds` by the database's clock, oldest first."""
    return _queued_ids(session, limit, Job.created_at < database_clock(session, -seconds))


def queued_jobs(session: Session | Connection, at_most: int) -> int:
    """Queued jobs counted up to `at_most` (a LIMIT subquery): a long queue costs no more."""
    queued = select(Job.id).where(Job.status == JobStatus.QUEUED.value).limit(at_most)
    return int(session.scalar(select(func.count()).select_from(queued.subquery())) or 0)


def recent_run_seconds(session: Session, count: int) -> list[float]:
    """Run seconds of the last `count` successful jobs, newest first (ix_jobs_finished_at)."""
    query = (
        select(Job.started_at, Job.finished_at)
        .where(
            Job.finished_at.is_not(None),
            Job.status == JobStatus.SUCCEEDED.value,
            Job.started_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(count)
    )
    return [
        (finished - started).total_seconds()
        for started, finished in session.execute(query)
        if started is not None and finished is not None  # as the query ensures; for mypy
    ]


def database_time(session: Session, seconds: float = 0.0) -> datetime:
    """The database's clock now, `seconds` ahead, as an aware datetime."""
    return session.scalar(select(database_clock(session, seconds)))  # type: ignore[return-value]


def queued_between(
    session: Session, since: datetime, until: datetime, limit: int = 1000
) -> list[str]:
    """Ids of queued jobs created in [since, until), oldest first: the reconciler's new jobs."""
    return _queued_ids(session, limit, Job.created_at >= since, Job.created_at < until)


def unannounced_ends(session: Session, older_than_seconds: float, limit: int = 100) -> list[str]:
    """Ids of jobs that ended over `older_than_seconds` ago with no `done` known in their log (a
    younger one's announcer may still be publishing: a second publish is refused, but slow)."""
    query = (
        select(Job.id)
        .where(
            Job.done_announced == false(),
            Job.status.in_(TERMINAL),
            Job.finished_at < database_clock(session, -older_than_seconds),
        )
        .limit(limit)
    )
    return list(session.scalars(query))


def conversation_messages(session: Session, conversation_id: str) -> list[Message]:
    """A conversation's turns as chat messages, oldest first."""
    query = (
        select(Turn.role, Turn.content)
        .where(Turn.conversation_id == conversation_id)
        .order_by(Turn.id)
    )
    return [Message(role=role, content=content) for role, content in session.execute(query)]


def cancel_requested(session: Session, job_id: str) -> bool:
    """Whether a job was asked to stop (the row's word, read by the lease keeper each renewal)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
