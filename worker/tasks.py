"""Celery tasks: claim the job row, drive the pipeline, checkpoint each stage, record the outcome.

Delivery is at-least-once (acks_late; a lost worker's job is released and republished), and the
task is idempotent: the claim is a conditional UPDATE, so a second delivery of a job that is
running or finished does nothing, and a redelivered job resumes after its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from models import events
from models import jobs as job_rows
from models.db import make_engine, make_session_factory
from models.errors import EngineUnavailable, JobTimedOut, VoiceChatError
from models.job import Conversation, Job, JobStatus, Operation, ReplyFormat, Stage
from models.storage import FileStore
from worker import runtime
from worker.celery_app import app, settings
from worker.pipeline import JobInput, Outcome

_LOGGER = logging.getLogger(__name__)

_SESSIONS: sessionmaker[Session] | None = None


def _sessions() -> sessionmaker[Session]:
    # Engines are created in the child on first use: a pool inherited over fork is unsafe.
    global _SESSIONS
    if _SESSIONS is None:
        _SESSIONS = make_session_factory(make_engine(settings.database_url))
    return _SESSIONS


class RowProgress:
    """Writes stage changes and checkpoints to the job's row, as the lease holder, and tells
    the job's event stream."""

    def __init__(self, session: Session, job_id: str, owner: str) -> None:
        self.session = session
        self.job_id = job_id
        self.owner = owner
        self.events = runtime.events(settings)

    def enter(self, stage: Stage, **checkpoint: Any) -> None:
        _LOGGER.info("job stage job_id=%s stage=%s", self.job_id, stage.value)
        job_rows.set_stage(self.session, self.job_id, self.owner, stage, **checkpoint)
        if "transcript" in checkpoint:
            self.events.publish(self.job_id, events.TRANSCRIPT, text=checkpoint["transcript"])
        self.events.publish(self.job_id, events.STAGE, stage=stage.value)

    def delta(self, text: str) -> None:
        self.events.publish(self.job_id, events.DELTA, text=text)


def _finished(job_id: str, session: Session) -> None:
    """Appends the final event, read back from the row so it says what the row says."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or not job.job_status.terminal:
        return
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    runtime.events(settings).publish(job_id, events.DONE, status=job.status, error=error)


@app.task(name="worker.run_job", acks_late=True)
def run_job(job_id: str) -> None:
    """Runs one job by id; a job that is finished or held by a live worker is left alone."""
    owner = runtime.worker_id()
    with _sessions()() as session:
        claimed = job_rows.claim(
            session,
            job_id,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        if claimed is job_rows.ClaimOutcome.EXHAUSTED:
            _finished(job_id, session)
        if claimed is not job_rows.ClaimOutcome.CLAIMED:
            _LOGGER.info("job not run job_id=%s claim=%s", job_id, claimed.value)
            return
        job = session.get(Job, job_id)
        assert job is not None
        _LOGGER.info("job running job_id=%s attempt=%d", job_id, job.attempts)
        runtime.events(settings).publish(
            job_id, events.STATUS, status=JobStatus.RUNNING.value, attempt=job.attempts
        )
        runtime.hold_lease(job_id, owner)
        try:
            _run(session, job, owner)
        except VoiceChatError as error:
            _LOGGER.info("job failed job_id=%s code=%s", job_id, error.code)
            job_rows.fail(session, job_id, error.code, error.detail)
        except SoftTimeLimitExceeded:
            timed_out = JobTimedOut(f"The job ran past {settings.task_soft_time_limit} seconds.")
            _LOGGER.warning("job timed out job_id=%s", job_id)
            job_rows.fail(session, job_id, timed_out.code, timed_out.detail)
        except Exception:
            _LOGGER.exception("job crashed job_id=%s", job_id)
            session.rollback()
            job_rows.fail(session, job_id, "internal_error", "The worker failed on this job.")
        finally:
            runtime.hold_lease(None, owner)
        _finished(job_id, session)


def _run(session: Session, job: Job, owner: str) -> None:
    try:
        pipeline = runtime.get_pipeline(settings)
    except VoiceChatError:
        raise
    except Exception as error:
        message = "The worker's engines failed to load; see the worker log."
        raise EngineUnavailable(message) from error
    audio_path = None
    if job.input_audio_file:
        audio_path = Path(FileStore(settings.uploads_dir).path(job.input_audio_file))
    options = dict(job.options or {})
    history = list(job.history or [])
    if job.conversation_id:
        conversation = session.get(Conversation, job.conversation_id)
        if conversation is not None and conversation.system is not None:
            options.setdefault("system", conversation.system)
        history += job_rows.conversation_messages(session, job.conversation_id)
    job_input = JobInput(
        job_id=job.id,
        reply=ReplyFormat(job.reply_format),
        operation=Operation(job.operation),
        text=job.input_text,
        audio_path=audio_path,
        options=options,
        history=tuple(history),
        transcript=job.transcript,
        reply_text=job.reply_text,
    )
    outcome = pipeline.run(job_input, RowProgress(session, job.id, owner))
    results = _results(job, outcome)
    if outcome.audio is not None:
        # Written before the row says so; a crash in between leaves a file the next attempt
        # replaces atomically under the same name, so there is never a second reply.
        name = FileStore(settings.results_dir).write(job.id, outcome.audio.to_wav())
        results.update(
            reply_audio_file=name,
            reply_audio_seconds=round(outcome.audio.duration, 3),
            synthesize_s=outcome.audio.seconds,
        )
        runtime.events(settings).publish(
            job.id, events.AUDIO, seconds=results["reply_audio_seconds"]
        )
    turns = []
    if job.conversation_id and job.operation == Operation.CHAT.value:
        prompt = outcome.transcript.text if outcome.transcript else job.transcript or job.input_text
        turns = [("user", prompt or ""), ("assistant", outcome.reply_text)]
    if not job_rows.succeed(session, job.id, owner, turns=turns, **results):
        _LOGGER.warning("job lease lost before it finished job_id=%s", job.id)
        return
    _LOGGER.info("job succeeded job_id=%s attempt=%d", job.id, job.attempts)


def _results(job: Job, outcome: Outcome) -> dict[str, Any]:
    results: dict[str, Any] = {"reply_text": outcome.reply_text}
    transcript = outcome.transcript
    if transcript is not None:
        results.update(
            transcript=transcript.text,
            transcript_language=transcript.language,
            transcribe_s=transcript.seconds,
        )
        if job.operation == Operation.TRANSCRIBE.value:
            results["transcript_segments"] = [
                {"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments
            ]
    if outcome.reply is not None:
        reply = outcome.reply
        results.update(
            generate_s=reply.seconds,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
        )
    return results
