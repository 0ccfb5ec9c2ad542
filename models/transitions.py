"""State changes of job rows; every transition is a conditional UPDATE on the row.

A worker writes only as its lease's holder (owner and attempt in the WHERE), so one that lost its
lease changes nothing once another attempt has the job. Lease times come from the database's
clock, the one every host shares: a host whose clock is off cannot expire another's lease early.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from models.errors import WorkerLost
from models.tables import Job, JobStatus, Operation, Stage, Turn, UTCDateTime

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
    """The outcome of a claim, and the lease and the claimed row when it was won."""

    outcome: ClaimOutcome
    lease: Lease | None = None
    job: Job | None = None


def database_clock(session: Session, seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database's current time, `seconds` ahead, as an SQL expression of a stored time:
    `clock_timestamp()` (`now()` stands still for a transaction), or on SQLite `strftime` with the
    six microsecond digits SQLAlchemy stores, so it compares in order."""
    return _clock(session.get_bind().dialect.name, seconds)


# Expressions and statements built once: building one cost about as much as its round trip
# (profiled on the job path, issue 23).
@functools.cache
def _clock(dialect: str, seconds: float = 0.0) -> ColumnElement[datetime]:
    if dialect == "sqlite":
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


def insert_queued(
    connection: Connection, job: Job, only_if: ColumnElement[bool] | None = None, **params: Any
) -> bool:
    """Adds a new job's row as one INSERT (the caller commits), filling in `job`'s defaults;
    with `only_if` (built once, its bound `params` given here), only where that holds. Returns
    whether the row was added. `job` stays transient: a unit of work flushing it cost the submit
    path more than the INSERT itself (profiled under load)."""
    values = {}
    for column in _JOB_COLUMNS:
        value = getattr(job, column.key)
        if value is None and column.default is not None:
            default: Any = column.default
            value = default.arg(None) if default.is_callable else default.arg
            setattr(job, column.key, value)
        if value is not None:  # left out: SQL NULL, where a JSON column would store 'null'
            values[column.key] = value
    if only_if is None:
        connection.execute(_INSERT_JOB, values)
        return True
    added = connection.execute(_insert_where(tuple(values), only_if), values | params)
    return added.first() is not None


@functools.cache
def _insert_where(columns: tuple[str, ...], only_if: ColumnElement[bool]) -> Insert:
    row = select(*(bindparam(name, type_=_JOB_TYPES[name]) for name in columns))
    # RETURNING says whether it added the row: an INSERT … SELECT's rowcount is -1 on psycopg.
    return _INSERT_JOB.from_select(columns, row.where(only_if)).returning(Job.id)


_JOB_COLUMNS = tuple(Job.__table__.columns)
_JOB_TYPES = {column.key: column.type for column in _JOB_COLUMNS}
_INSERT_JOB = insert(Job)


# The stage a claimed job starts in, as the pipeline enters it (worker/pipeline.py): the claim
# writes it, so the first stage costs no write of its own (issue 23). Should the two disagree,
# the pipeline's `set_stage` corrects the row.
_FIRST_STAGE = case(
    (Job.operation == Operation.TRANSCRIBE.value, Stage.TRANSCRIBING.value),
    (Job.operation == Operation.SPEAK.value, Stage.SYNTHESIZING.value),
    (Job.reply_text.is_not(None), Stage.SYNTHESIZING.value),  # resumed after its reply
    (or_(Job.transcript.is_not(None), Job.input_text.is_not(None)), Stage.GENERATING.value),
    else_=Stage.TRANSCRIBING.value,
)
# The lease holder's writes leave the session's copy of the row alone (SQLAlchemy's default
# matched the WHERE against it in Python before each write); one that returns the row refreshes
# that copy, and a job's end is announced from it.
_REFRESHED = {"synchronize_session": False, "populate_existing": True}
# A write that is a transaction alone is sent alone: no BEGIN and COMMIT round trips around it
# (four of a job's critical path on PostgreSQL: the claim's and the end's; bench.overhead).
_ALONE = {"isolation_level": "AUTOCOMMIT"}


def _alone(session: Session) -> None:
    """Makes the session's next statement its own transaction, unless one is open already."""
    if not session.in_transaction():
        session.connection(execution_options=_ALONE)


def claim(
    session: Session, job_id: str, *, owner: str, lease_seconds: int, max_attempts: int
) -> Claim:
    """Takes a job for `owner`: a queued job, or a running one whose lease expired; a conditional
    UPDATE, so exactly once however often the message is delivered. A job that had `max_attempts`
    fails instead; one asked to stop ends `canceled`."""
    dialect = session.get_bind().dialect.name
    query = _claim_query(dialect, owner, lease_seconds, max_attempts)
    _alone(session)
    job = session.execute(
        query, {"job_id": job_id}, execution_options=_REFRESHED
    ).scalar_one_or_none()
    session.commit()
    if job is not None:
        return Claim(ClaimOutcome.CLAIMED, Lease(job_id, owner, job.attempts), job)
    claimable = update(Job).where(Job.id == job_id, _claimable(_clock(dialect)))
    if _apply(session, claimable.where(Job.cancel_requested.is_(True)), **_canceled(session)):
        return Claim(ClaimOutcome.CANCELED)
    message = f"The worker running this job was lost {max_attempts} times."
    exhausted = claimable.where(Job.attempts >= max_attempts)
    if _apply(session, exhausted, **_failed(session, WORKER_LOST, message)):
        return Claim(ClaimOutcome.EXHAUSTED)
    return Claim(ClaimOutcome.TAKEN)


@functools.cache
def _claim_query(dialect: str, owner: str, lease_seconds: int, max_attempts: int) -> Update:
    now = _clock(dialect)
    return (
        update(Job)
        .where(
            Job.id == bindparam("job_id"),
            _claimable(now),
            Job.attempts < max_attempts,
            Job.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=_clock(dialect, lease_seconds),
            stage=_FIRST_STAGE,
        )
        .returning(Job)
    )


def renew_lease(session: Session, lease: Lease, lease_seconds: int) -> bool:
    """Extends a lease from the database's clock; returns False if the lease was lost."""
    return _write_held(session, lease, lease_expires_at=database_clock(session, lease_seconds))


def release_expired(session: Session, job_id: str, attempt: int) -> bool:
    """Puts `attempt` of a running job back in the queue once its lease expired; checkpoints stay.
    Expiry is checked in the UPDATE itself: a lease renewed meanwhile is kept."""
    query = _expired(session, job_id, attempt).where(Job.cancel_requested.is_(False))
    return _apply(session, query, **_REQUEUED)


def cancel_expired(session: Session, job_id: str, attempt: int) -> bool:
    """`release_expired` for a job asked to stop: it ends `canceled`, not run again."""
    query = _expired(session, job_id, attempt).where(Job.cancel_requested.is_(True))
    return _apply(session, query, **_canceled(session))


def _expired(session: Session, job_id: str, attempt: int) -> Update:
    return update(Job).where(
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.attempts == attempt,
        Job.lease_expires_at < database_clock(session),
    )


def release_held_by(session: Session, job_id: str, owner_prefix: str) -> int | None:
    """Requeues a running job a worker parent's dead child held (its owner starts with
    `owner_prefix`); returns the attempt released, or None."""
    query = _held_by(job_id, owner_prefix).where(Job.cancel_requested.is_(False))
    released = session.execute(query.values(**_REQUEUED).returning(Job.attempts)).scalar()
    session.commit()
    return released


def set_stage(session: Session, lease: Lease, stage: Stage, **checkpoint: Any) -> bool:
    """Records the stage a running job entered, with the results of the stage before it."""
    return _write_held(session, lease, stage=stage.value, **checkpoint)


def succeed(
    session: Session, lease: Lease, *, turns: Sequence[tuple[str, str]] = (), **results: Any
) -> bool:
    """Marks a job the lease holds succeeded with its final results; returns whether it changed.
    `turns` (role, content) join its conversation in the same transaction: a conversation never
    holds the turns of a job that did not succeed, nor misses them. A job asked to stop is left
    running (CancelRequested): the UPDATE reads the row's flag, so no stop falls between a look
    and the write."""
    if not turns:
        _alone(session)
    ended = _end_held(
        session, lease, unless_stopped=True, **_ended(session, JobStatus.SUCCEEDED), **results
    )
    if ended is not None and ended.conversation_id is not None:
        session.add_all(
            Turn(conversation_id=ended.conversation_id, job_id=ended.id, role=role, content=content)
            for role, content in turns
        )
    session.commit()
    if ended is None and session.scalar(_CANCEL_REQUESTED, _lease(lease)):
        raise CancelRequested(lease.job_id)
    return ended is not None


def fail(session: Session, lease: Lease, code: str, message: str) -> bool:
    """Marks a job the lease holds failed with a machine code and a message."""
    _alone(session)
    failed = _end_held(session, lease, **_failed(session, code, message)) is not None
    session.commit()
    return failed


def fail_held_by(session: Session, job_id: str, owner_prefix: str, code: str, message: str) -> bool:
    """Fails a running job one of a worker parent's children held (see `release_held_by`)."""
    return _apply(session, _held_by(job_id, owner_prefix), **_failed(session, code, message))


def cancel_held_by(session: Session, job_id: str, owner_prefix: str) -> bool:
    """`release_held_by` for a job asked to stop: it ends `canceled`, not run again."""
    query = _held_by(job_id, owner_prefix).where(Job.cancel_requested.is_(True))
    return _apply(session, query, **_canceled(session))


def _held_by(job_id: str, owner_prefix: str) -> Update:
    return update(Job).where(
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.lease_owner.startswith(owner_prefix, autoescape=True),
    )


def cancel_queued(session: Session, job_id: str) -> bool:
    """Ends a still queued job `canceled`; a worker that gets its message later finds nothing."""
    query = update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
    return _apply(session, query, **_canceled(session))


def request_cancel(session: Session, job_id: str) -> bool:
    """Asks an unfinished job to stop (False when it had already ended): its worker ends it
    `canceled` at its next token, sentence or stage boundary, else its recovery or a claim does."""
    query = update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL))
    return _apply(session, query, cancel_requested=True)


def cancel_held(session: Session, lease: Lease, **kept: Any) -> bool:
    """Ends `canceled` a job the lease holds, keeping `kept` (the reply so far), adding no turn."""
    _alone(session)
    canceled = _end_held(session, lease, **_canceled(session), **kept) is not None
    session.commit()
    return canceled


def fail_unclaimed(session: Session, job_id: str, code: str, message: str) -> bool:
    """Fails a job no worker ever claimed (its message could not be sent)."""
    query = update(Job).where(
        Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.attempts == 0
    )
    return _apply(session, query, **_failed(session, code, message))


def mark_done_announced(session: Session, job_id: str) -> None:
    """Records that a finished job's `done` event is in its event log."""
    _alone(session)
    session.connection().execute(_DONE_ANNOUNCED, {"job_id": job_id})
    session.commit()


_DONE_ANNOUNCED = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.status.in_(TERMINAL))
    .values(done_announced=True)
)


def _ended(session: Session, status: JobStatus) -> dict[str, Any]:
    return {
        "status": status.value,
        "stage": None,
        "finished_at": database_clock(session),
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _failed(session: Session, code: str, message: str) -> dict[str, Any]:
    return {**_ended(session, JobStatus.FAILED), "error_code": code, "error_message": message}


def _canceled(session: Session) -> dict[str, Any]:
    return {
        **_ended(session, JobStatus.CANCELED),
        "cancel_requested": True,
        "error_code": CANCELED,
        "error_message": CANCELED_MESSAGE,
    }


_REQUEUED = {
    "status": JobStatus.QUEUED.value,
    "stage": None,
    "lease_owner": None,
    "lease_expires_at": None,
}


# Only the current lease holder's attempt may write: a worker that lost its lease (and whose job
# was handed to another attempt) cannot overwrite the new attempt's results. The lease and the
# written values are bound parameters, so each statement is built (and its cache key made) once.
_HOLDS = (
    Job.id == bindparam("held_id"),
    Job.status == JobStatus.RUNNING.value,
    Job.lease_owner == bindparam("held_owner"),
    Job.attempts == bindparam("held_attempt"),
)
# Whether the job the lease holds was asked to stop (no row: the lease is lost).
_CANCEL_REQUESTED = select(Job.cancel_requested).where(*_HOLDS, Job.cancel_requested.is_(True))


def _lease(lease: Lease) -> dict[str, Any]:
    return {"held_id": lease.job_id, "held_owner": lease.owner, "held_attempt": lease.attempt}


def _held_update(
    lease: Lease, values: dict[str, Any], *, unless_stopped: bool = False, returning: bool = False
) -> tuple[Update, dict[str, Any]]:
    """The UPDATE of the row the lease holds that writes `values`, and its parameters: an SQL
    expression (a clock) goes into the statement, any other value is bound."""
    sql: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for name, value in values.items():
        (sql if isinstance(value, ColumnElement) else plain)[name] = value
    query = _held_statement(tuple(plain), tuple(sql.items()), unless_stopped, returning)
    return query, _lease(lease) | {f"new_{name}": value for name, value in plain.items()}


# Keyed by the SQL expressions too: the clocks, each one object (`_clock`), so a key matches by
# identity.
@functools.lru_cache(maxsize=64)
def _held_statement(
    plain: tuple[str, ...],
    sql: tuple[tuple[str, ColumnElement[Any]], ...],
    unless_stopped: bool,
    returning: bool,
) -> Update:
    query = update(Job).where(*_HOLDS)
    if unless_stopped:
        query = query.where(Job.cancel_requested.is_not(True))
    bound = {name: bindparam(f"new_{name}", type_=_JOB_TYPES[name]) for name in plain}
    query = query.values({**bound, **dict(sql)})
    return query.returning(Job) if returning else query


def _write_held(session: Session, lease: Lease, **values: Any) -> bool:
    """Writes `values` to the row the lease holds and commits; False when the lease was lost."""
    _alone(session)
    query, params = _held_update(lease, values)
    changed = rowcount(session.connection().execute(query, params))
    session.commit()
    return bool(changed)


def _end_held(
    session: Session, lease: Lease, *, unless_stopped: bool = False, **values: Any
) -> Job | None:
    """Ends the job the lease holds (uncommitted; `unless_stopped`: unless it was asked to stop):
    the ended row, refreshed in the session."""
    query, params = _held_update(lease, values, unless_stopped=unless_stopped, returning=True)
    return session.execute(query, params, execution_options=_REFRESHED).scalar_one_or_none()


def _apply(session: Session, query: Update, **values: Any) -> bool:
    """Runs the conditional UPDATE and commits; returns whether it changed a row."""
    _alone(session)
    result = session.execute(query.values(**values))
    session.commit()
    return bool(rowcount(result))


def rowcount(result: Any) -> int:
    """The rows a DML statement changed (0 where the driver does not say)."""
    return int(getattr(result, "rowcount", 0) or 0)
