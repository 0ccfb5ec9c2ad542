"""State changes of job rows; every transition is a conditional UPDATE on the row."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import ColumnElement, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session

from models.tables import Job, JobStatus, Stage, Turn, utcnow

TERMINAL = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value)
WORKER_LOST = "worker_lost"


class ClaimOutcome(Enum):
    """What came of trying to claim a job."""

    CLAIMED = "claimed"  # this caller runs it now
    TAKEN = "taken"  # finished, or held by a live worker: nothing to do
    EXHAUSTED = "exhausted"  # it had its attempts; it is now failed with `worker_lost`


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
    )


def claim(
    session: Session, job_id: str, *, owner: str, lease_seconds: int, max_attempts: int
) -> ClaimOutcome:
    """Takes a job for `owner`: a queued job, or a running one whose lease expired.

    The conditional UPDATE makes the claim exactly-once however often the message is delivered;
    each claim counts an attempt, and a job that has had `max_attempts` fails instead of looping.
    """
    now = utcnow()
    won = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now), Job.attempts < max_attempts)
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
    )
    session.commit()
    if _count(won):
        return ClaimOutcome.CLAIMED
    lost = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now), Job.attempts >= max_attempts)
        .values(
            status=JobStatus.FAILED.value,
            stage=None,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error_code=WORKER_LOST,
            error_message=f"The worker running this job was lost {max_attempts} times.",
        )
    )
    session.commit()
    return ClaimOutcome.EXHAUSTED if _count(lost) else ClaimOutcome.TAKEN


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: int) -> bool:
    """Extends `owner`'s lease on a running job; returns False if the lease was lost."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    session.commit()
    return bool(_count(result))


def release(session: Session, job_id: str, *, owner_prefix: str | None = None) -> bool:
    """Puts a running job back in the queue after its worker was lost; checkpoints stay.

    Args:
        session: A database session.
        job_id: The job.
        owner_prefix: Only release it if its lease holder's name starts with this (a worker's
            parent releases only what its own children held).

    Returns:
        Whether the job went back to `queued`.
    """
    query = update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
    if owner_prefix is not None:
        query = query.where(Job.lease_owner.startswith(owner_prefix, autoescape=True))
    result = session.execute(
        query.values(
            status=JobStatus.QUEUED.value, stage=None, lease_owner=None, lease_expires_at=None
        )
    )
    session.commit()
    return bool(_count(result))


def set_stage(session: Session, job_id: str, owner: str, stage: Stage, **checkpoint: Any) -> bool:
    """Records the stage a running job entered, with the results of the stage before it."""
    return _update_held(session, job_id, owner, stage=stage.value, **checkpoint)


def succeed(
    session: Session,
    job_id: str,
    owner: str,
    *,
    turns: Sequence[tuple[str, str]] = (),
    **results: Any,
) -> bool:
    """Marks a job `owner` holds succeeded with its final results; returns whether it changed.

    `turns` (role, content) are added to the job's conversation in the same transaction, so a
    conversation never holds the turns of a job that did not succeed, nor misses them.
    """
    result = session.execute(
        _held(job_id, owner).values(
            status=JobStatus.SUCCEEDED.value,
            stage=None,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            **results,
        )
    )
    changed = bool(_count(result))
    if changed and turns:
        conversation_id = session.scalar(select(Job.conversation_id).where(Job.id == job_id))
        if conversation_id is not None:
            session.add_all(
                Turn(conversation_id=conversation_id, job_id=job_id, role=role, content=content)
                for role, content in turns
            )
    session.commit()
    return changed


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    """Marks a job that is not yet terminal as failed with a machine code and a message."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(TERMINAL))
        .values(
            status=JobStatus.FAILED.value,
            stage=None,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            error_code=code,
            error_message=message,
        )
    )
    session.commit()
    return bool(_count(result))


def _held(job_id: str, owner: str) -> Update:
    # Only the current lease holder may write: a worker that lost its lease (and whose job
    # was handed to another) cannot overwrite the new attempt's results.
    return update(Job).where(
        Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.lease_owner == owner
    )


def _update_held(session: Session, job_id: str, owner: str, **values: Any) -> bool:
    result = session.execute(_held(job_id, owner).values(**values))
    session.commit()
    return bool(_count(result))


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
