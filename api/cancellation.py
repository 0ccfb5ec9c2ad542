"""Canceling a job: at once while it is queued, at its worker's next boundary while it runs; and
the cancel of an OpenAI route's job that no one will be answered with (its client left, or its
wait ran out)."""

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
# Why an unanswered job was canceled, as logged.
CLIENT_LEFT = "client_left"
WAIT_RAN_OUT = "wait_ran_out"


def cancel(session: Session, job: Job) -> tuple[Job, int]:
    """Cancels a job; returns it and 200 (canceled now or before) or 202 (asked to stop).

    A queued job ends `canceled` now (a worker that receives its message later finds nothing to
    claim); a running one is marked `cancel_requested` and its worker, told through Redis, stops
    at its next token, sentence or stage. JobFinished if it had succeeded or failed.
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


def cancel_unanswered(job_id: str, reason: str) -> bool:
    """Cancels the job of an OpenAI request that will not be answered with it; False if it had
    ended. A session of its own: it runs as a held request ends, maybe after the request's."""
    sessions: sessionmaker[Session] = current_app.extensions["voicechat.sessions"]
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.job_status.terminal:
            return False
        try:
            _job, status = cancel(session, job)
        except JobFinished:
            return False
    _LOGGER.info("unanswered job canceled job_id=%s reason=%s status=%d", job_id, reason, status)
    return True


def canceled_on_leave(job_id: str, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Passes a streamed answer on; a client that leaves before its end cancels its job, seen
    as GeneratorExit (a write to it failed) or as `client_left` at a quiet beat."""
    try:
        yield from chunks
    except GeneratorExit:
        cancel_unanswered(job_id, CLIENT_LEFT)
        raise
    if client_left():
        cancel_unanswered(job_id, CLIENT_LEFT)
