"""Canceling a job: at once while it is queued, at its worker's next boundary while it runs; and
the cancel of a job whose client left an OpenAI route before its answer came."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TypeVar

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from api.follow import client_left
from models import cancel_signal, event_log, transitions
from models.errors import JobFinished, JobNotFound
from models.settings import Settings
from models.tables import Job, JobStatus

_LOGGER = logging.getLogger(__name__)

Chunk = TypeVar("Chunk")


def cancel(session: Session, job: Job) -> tuple[Job, int]:
    """Cancels a job: a queued one at once, a running one by asking its worker to stop.

    A queued job ends `canceled` now (a worker that receives its message later finds nothing to
    claim) and its event log gets its `done`. A running one is marked `cancel_requested` and
    its worker told through Redis; it stops at its next token, sentence or stage boundary.

    Args:
        session: The request's database session.
        job: The job, as loaded for the caller.

    Returns:
        The job as it is now, and the status to answer: 200 when it is canceled (now or
        before), 202 when its worker was asked to stop.

    Raises:
        JobFinished: The job had succeeded or failed.
    """
    events: event_log.JobEvents = current_app.extensions["voicechat.events"]
    webhooks = current_app.extensions["voicechat.queue"].send_webhook
    if transitions.cancel_queued(session, job.id):
        _LOGGER.info("job canceled while queued job_id=%s", job.id)
        event_log.announce_end(session, events, job.id, webhooks=webhooks)
        return _reread(session, job.id), 200
    if transitions.request_cancel(session, job.id):
        job = _reread(session, job.id)
        if job.status == JobStatus.QUEUED.value and transitions.cancel_queued(session, job.id):
            # Its worker was lost between the two updates and it was queued again.
            event_log.announce_end(session, events, job.id, webhooks=webhooks)
            return _reread(session, job.id), 200
        settings: Settings = current_app.extensions["voicechat.settings"]
        # The key outlives anything the job may still run; the row stays the truth after it.
        ttl = settings.task_time_limit + settings.lease_seconds
        cancel_signal.raise_flag(current_app.extensions["voicechat.redis"], job.id, ttl_seconds=ttl)
        _LOGGER.info("job cancel requested job_id=%s", job.id)
        return job, 202
    job = _reread(session, job.id)
    if job.status == JobStatus.CANCELED.value:
        return job, 200
    raise JobFinished(f"Job {job.id} is {job.status}; there is nothing to cancel.")


def _reread(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return job


def cancel_for_departed_client(job_id: str) -> None:
    """Cancels the job of a client that closed its connection before its answer came; a job
    that ended meanwhile is left as it is. Uses a session of its own: it runs as a held
    request ends, possibly after the request's own session is closed."""
    sessions: sessionmaker[Session] = current_app.extensions["voicechat.sessions"]
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.job_status.terminal:
            return
        try:
            _job, status = cancel(session, job)
        except JobFinished:
            return
    _LOGGER.info("client left; job canceled job_id=%s status=%d", job_id, status)


def canceled_on_leave(job_id: str, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Passes a streamed answer on; a client that leaves before its end cancels its job.

    The server closes the stream when a write to a departed client fails (GeneratorExit here,
    under gunicorn after its BrokenPipe), and a stream that stops at a quiet beat because
    `client_left` said so ends early without one: both cancel. A job that ended is untouched.
    """
    try:
        yield from chunks
    except GeneratorExit:
        cancel_for_departed_client(job_id)
        raise
    if client_left():
        cancel_for_departed_client(job_id)
