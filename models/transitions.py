"""State changes of job rows; every transition is a conditional UPDATE on the row.

A worker writes only as the holder of the job's lease: each of its writes names the lease holder
and the attempt it claimed, so a worker that lost its lease (frozen past its expiry, cut off by a
partition) changes nothing once another attempt has the job. Lease times come from the
database's clock, the one clock every host shares: a host whose own clock is off cannot expire
another host's lease early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Update,
    and_,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from models.errors import WorkerLost
from models.tables import Job, JobStatus, Stage, Turn, UTCDateTime

TERMINAL = tuple(status.value for status in JobStatus if status.terminal)
WORKER_LOST = WorkerLost.code
# The error code and message of a canceled job (`POST /v1/jobs/{id}/cancel`).
CANCELED = "canceled"
CANCELED_MESSAGE = "The job was canceled at the client's request."


class LeaseLost(Exception):
    """This attempt no longer holds its job: another attempt has it, or it ended; stop writing."""


class CancelRequested(Exception):
    """This attempt's job was asked to stop: end it `canceled` (as the lease's holder) and stop."""


class ClaimOutcome(Enum):
    """What came of trying to claim a job."""

    CLAIMED = "claimed"  # this caller runs it now
    TAKEN = "taken"  # finished, or held by a live worker: nothing to do
    EXHAUSTED = "exhausted"  # it had its attempts; it is now failed with `worker_lost`
    CANCELED = "canceled"  # it was asked to stop while no worker ran it; it is now canceled


@dataclass(frozen=True)
class Lease:
    """One attempt's hold on a job: who holds it and which attempt it is."""

    job_id: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim, and the lease when it was won."""

    outcome: ClaimOutcome
    lease: Lease | None = None


def database_clock(session: Session, seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database's current time, `seconds` ahead, as an SQL expression.

    PostgreSQL's `clock_timestamp()` (not `now()`, which stands still for a transaction); on
    SQLite, `strftime` with microseconds in the six digits SQLAlchemy stores, so the text
    compares in order with stored times.

    Args:
        session: A session; its dialect picks the expression.
        seconds: How far ahead of now.

    Returns:
        The expression, typed as a stored time.
    """
    if session.get_bind().dialect.name == "sqlite":
        shift = f"{seconds:+.3f} seconds"
        return type_coerce(func.strftime("%Y-%m-%d %H:%M:%f000", "now", shift), UTCDateTime)
    clock: ColumnElement[Any] = func.clock_timestamp()
    if seconds:
        clock = clock + timedelta(seconds=seconds)
    return type_coerce(clock, UTCDateTime)


def _claimable(now: ColumnElement[datetime]) -> ColumnElement[bool]:
    return or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
    )


def insert_queued(session: Session, job: Job) -> None:
    """Adds a new job's row in the session's transaction as one INSERT, and fills in `job`'s
    column defaults, so the caller can answer with it. `job` stays transient: no unit of work
    flushes it, which cost the submit path more than the INSERT itself (profiled under load).

    Args:
        session: A database session; the caller commits.
        job: The new job, its id and input set.
    """
    values = {}
    for column in _JOB_COLUMNS:
        value = getattr(job, column.key)
        if value is None and column.default is not None:
            default: Any = column.default
            value = default.arg(None) if default.is_callable else default.arg
            setattr(job, column.key, value)
        if value is not None:  # left out: SQL NULL, where a JSON column would store 'null'
            values[column.key] = value
    session.connection().execute(_INSERT_JOB, values)


_JOB_COLUMNS = tuple(Job.__table__.columns)
_INSERT_JOB = insert(Job)


def claim(
    session: Session, job_id: str, *, owner: str, lease_seconds: int, max_attempts: int
) -> Claim:
    """Takes a job for `owner`: a queued job, or a running one whose lease expired.

    The conditional UPDATE makes the claim exactly-once however often the message is delivered;
    each claim counts an attempt, and a job that has had `max_attempts` fails instead of looping.
    A job asked to stop (`cancel_requested`) is never claimed: it ends `canceled` instead.

    Returns:
        The outcome; when claimed, the lease with its attempt number.
    """
    now = database_clock(session)
    attempt = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            _claimable(now),
            Job.attempts < max_attempts,
            Job.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=database_clock(session, lease_seconds),
        )
        .returning(Job.attempts)
    ).scalar_one_or_none()
    session.commit()
    if attempt is not None:
        return Claim(ClaimOutcome.CLAIMED, Lease(job_id, owner, attempt))
    query = update(Job).where(Job.id == job_id, _claimable(now), Job.cancel_requested.is_(True))
    if _count(session.execute(query.values(**_canceled(session)))):
        session.commit()
        return Claim(ClaimOutcome.CANCELED)
    lost = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now), Job.attempts >= max_attempts)
        .values(
            **_ended(session, JobStatus.FAILED),
            error_code=WORKER_LOST,
            error_message=f"The worker running this job was lost {max_attempts} times.",
        )
    )
    session.commit()
    return Claim(ClaimOutcome.EXHAUSTED if _count(lost) else ClaimOutcome.TAKEN)


def renew_lease(session: Session, lease: Lease, lease_seconds: int) -> bool:
    """Extends a lease from the database's clock; returns False if the lease was lost."""
    return _update_held(session, lease, lease_expires_at=database_clock(session, lease_seconds))


def release_expired(session: Session, job_id: str, attempt: int) -> bool:
    """Puts a running job back in the queue once its lease expired; checkpoints stay.

    Expiry is checked in the UPDATE itself, so a lease renewed since the caller found it
    expired is kept: releasing it would cost an attempt with no worker lost.

    Args:
        session: A database session.
        job_id: The job.
        attempt: The attempt found expired; a later attempt is never released by this call.

    Returns:
        Whether the job went back to `queued`.
    """
    query = _expired(session, job_id, attempt).where(Job.cancel_requested.is_(False))
    result = session.execute(query.values(**_requeued()))
    session.commit()
    return bool(_count(result))


def cancel_expired(session: Session, job_id: str, attempt: int) -> bool:
    """Ends `canceled` a running job asked to stop whose lease expired: its worker died before
    it could stop, and the job is not run again (the reconciler's counterpart of
    `release_expired`, under the same conditions).

    Returns:
        Whether the job is now canceled.
    """
    query = _expired(session, job_id, attempt).where(Job.cancel_requested.is_(True))
    result = session.execute(query.values(**_canceled(session)))
    session.commit()
    return bool(_count(result))


def _expired(session: Session, job_id: str, attempt: int) -> Update:
    return update(Job).where(
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.attempts == attempt,
        Job.lease_expires_at < database_clock(session),
    )


def release_held_by(session: Session, job_id: str, owner_prefix: str) -> int | None:
    """Puts a running job back in the queue after its holder died: a worker's parent releases
    what one of its own children held (their lease holders' names start with `owner_prefix`).

    Returns:
        The attempt released, or None when the job was not held under that prefix.
    """
    query = _held_by(job_id, owner_prefix).where(Job.cancel_requested.is_(False))
    attempt = session.execute(query.values(**_requeued()).returning(Job.attempts))
    released = attempt.scalar_one_or_none()
    session.commit()
    return released


def set_stage(session: Session, lease: Lease, stage: Stage, **checkpoint: Any) -> bool:
    """Records the stage a running job entered, with the results of the stage before it."""
    return _update_held(session, lease, stage=stage.value, **checkpoint)


def succeed(
    session: Session, lease: Lease, *, turns: Sequence[tuple[str, str]] = (), **results: Any
) -> bool:
    """Marks a job the lease holds succeeded with its final results; returns whether it changed.

    `turns` (role, content) are added to the job's conversation in the same transaction, so a
    conversation never holds the turns of a job that did not succeed, nor misses them.
    """
    values = _ended(session, JobStatus.SUCCEEDED)
    result = session.execute(_held(lease).values(**values, **results))
    changed = bool(_count(result))
    if changed and turns:
        conversation_id = session.scalar(select(Job.conversation_id).where(Job.id == lease.job_id))
        if conversation_id is not None:
            session.add_all(
                Turn(conversation_id=conversation_id, job_id=lease.job_id, role=role, content=c)
                for role, c in turns
            )
    session.commit()
    return changed


def fail(session: Session, lease: Lease, code: str, message: str) -> bool:
    """Marks a job the lease holds failed with a machine code and a message."""
    values = _ended(session, JobStatus.FAILED)
    return _update_held(session, lease, **values, error_code=code, error_message=message)


def fail_held_by(session: Session, job_id: str, owner_prefix: str, code: str, message: str) -> bool:
    """Fails a running job one of a worker parent's children held (see `release_held_by`)."""
    query = _held_by(job_id, owner_prefix)
    values = _ended(session, JobStatus.FAILED)
    result = session.execute(query.values(**values, error_code=code, error_message=message))
    session.commit()
    return bool(_count(result))


def cancel_held_by(session: Session, job_id: str, owner_prefix: str) -> bool:
    """Ends `canceled` a running job asked to stop whose holder, a child of this worker's
    parent, died before it could stop: it is not run again (see `release_held_by`)."""
    query = _held_by(job_id, owner_prefix).where(Job.cancel_requested.is_(True))
    result = session.execute(query.values(**_canceled(session)))
    session.commit()
    return bool(_count(result))


def _held_by(job_id: str, owner_prefix: str) -> Update:
    return update(Job).where(
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.lease_owner.startswith(owner_prefix, autoescape=True),
    )


def cancel_queued(session: Session, job_id: str) -> bool:
    """Ends `canceled` a job no worker runs, at once: only while it is still queued, so a
    worker that receives its message later finds nothing to claim.

    Returns:
        Whether the job is now canceled.
    """
    query = update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
    result = session.execute(query.values(**_canceled(session)))
    session.commit()
    return bool(_count(result))


def request_cancel(session: Session, job_id: str) -> bool:
    """Asks an unfinished job to stop: its worker ends it `canceled` at its next token, sentence
    or stage boundary; a worker that dies first has it ended so by its recovery, and a claim
    ends it so instead of running it.

    Returns:
        Whether the job was unfinished (False: it had succeeded, failed or been canceled).
    """
    query = update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL))
    result = session.execute(query.values(cancel_requested=True))
    session.commit()
    return bool(_count(result))


def cancel_held(session: Session, lease: Lease, **kept: Any) -> bool:
    """Ends `canceled` a job the lease holds, keeping `kept` (the reply text so far); a worker
    that lost its lease changes nothing. The conversation gets no turn from it."""
    return _update_held(session, lease, **_canceled(session), **kept)


def fail_unclaimed(session: Session, job_id: str, code: str, message: str) -> bool:
    """Fails a job no worker ever claimed (its message could not be sent)."""
    query = update(Job).where(
        Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.attempts == 0
    )
    values = _ended(session, JobStatus.FAILED)
    result = session.execute(query.values(**values, error_code=code, error_message=message))
    session.commit()
    return bool(_count(result))


def mark_done_announced(session: Session, job_id: str) -> None:
    """Records that a finished job's `done` event is in its event log."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(TERMINAL)).values(done_announced=True)
    )
    session.commit()


def _ended(session: Session, status: JobStatus) -> dict[str, Any]:
    return {
        "status": status.value,
        "stage": None,
        "finished_at": database_clock(session),
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _canceled(session: Session) -> dict[str, Any]:
    return {
        **_ended(session, JobStatus.CANCELED),
        "cancel_requested": True,
        "error_code": CANCELED,
        "error_message": CANCELED_MESSAGE,
    }


def _requeued() -> dict[str, Any]:
    return {
        "status": JobStatus.QUEUED.value,
        "stage": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _held(lease: Lease) -> Update:
    # Only the current lease holder's attempt may write: a worker that lost its lease (and
    # whose job was handed to another attempt) cannot overwrite the new attempt's results.
    return update(Job).where(
        Job.id == lease.job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.lease_owner == lease.owner,
        Job.attempts == lease.attempt,
    )


def _update_held(session: Session, lease: Lease, **values: Any) -> bool:
    result = session.execute(_held(lease).values(**values))
    session.commit()
    return bool(_count(result))


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
