"""Celery tasks: claim the job row, drive the pipeline, checkpoint each stage, record the outcome.

The pipeline hands back typed stage results (`Transcript`, `Reply`, `Audio`); the functions
here are the one place that maps each to the job row's columns, for checkpoints and outcome.

Delivery is at-least-once (acks_late; a lost worker's job is released and republished), and the
task is idempotent: the claim is a conditional UPDATE, so a second delivery of a job that is
running or finished does nothing, and a redelivered job resumes after its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from models import event_log, queries, transitions
from models.db import make_engine, make_session_factory
from models.errors import EngineUnavailable, JobTimedOut, VoiceChatError
from models.event_log import JobEvents
from models.storage import FileStore
from models.tables import Conversation, Job, JobStatus, Operation, ReplyFormat, Stage
from worker import lease_keeper, runtime
from worker.celery_app import app, settings
from worker.engines import Audio, Reply, Transcript
from worker.pipeline import JobInput, Outcome

_LOGGER = logging.getLogger(__name__)

_SESSIONS: sessionmaker[Session] | None = None
_EVENTS: JobEvents | None = None


def _sessions() -> sessionmaker[Session]:
    # Engines are created in the child on first use: a pool inherited over fork is unsafe.
    global _SESSIONS
    if _SESSIONS is None:
        _SESSIONS = make_session_factory(make_engine(settings.database_url))
    return _SESSIONS


def _events() -> JobEvents:
    """This process's writer of job event streams, made on first use (after any fork)."""
    global _EVENTS
    if _EVENTS is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        _EVENTS = JobEvents(client, ttl_seconds=settings.events_ttl_seconds)
    return _EVENTS


def transcript_columns(transcript: Transcript, *, with_segments: bool = False) -> dict[str, Any]:
    """Maps a transcript to the job row's columns.

    Args:
        transcript: What the recogniser heard.
        with_segments: Also keep its timed segments (a transcription job's answer has them).

    Returns:
        Column name to value.
    """
    columns: dict[str, Any] = {
        "transcript": transcript.text,
        "transcript_language": transcript.language,
        "transcribe_s": transcript.seconds,
    }
    if with_segments:
        columns["transcript_segments"] = [
            {"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments
        ]
    return columns


def reply_columns(reply: Reply) -> dict[str, Any]:
    """Maps the language model's reply to the job row's columns.

    Args:
        reply: What the language model answered.

    Returns:
        Column name to value.
    """
    return {
        "reply_text": reply.text,
        "generate_s": reply.seconds,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "finish_reason": reply.finish_reason,
    }


def audio_columns(audio: Audio, file_name: str) -> dict[str, Any]:
    """Maps the spoken reply, stored in the result store as `file_name`, to the row's columns.

    Args:
        audio: The synthesised speech.
        file_name: Its name in the result store.

    Returns:
        Column name to value.
    """
    return {
        "reply_audio_file": file_name,
        "reply_audio_seconds": round(audio.duration, 3),
        "synthesize_s": audio.seconds,
    }


def _checkpoint_columns(done: Transcript | Reply | None) -> dict[str, Any]:
    """The columns a stage's result is checkpointed in; a redelivered job resumes after it."""
    if isinstance(done, Transcript):
        return transcript_columns(done)
    if isinstance(done, Reply):
        return reply_columns(done)
    return {}


class RowProgress:
    """Writes stage changes and checkpoints to the job's row, as the lease holder, and tells
    the job's event stream."""

    def __init__(self, session: Session, job_id: str, owner: str) -> None:
        self.session = session
        self.job_id = job_id
        self.owner = owner
        self.events = _events()

    def enter(self, stage: Stage, done: Transcript | Reply | None = None) -> None:
        """Writes the stage and the previous stage's result as one checkpoint, then tells."""
        _LOGGER.info("job stage job_id=%s stage=%s", self.job_id, stage.value)
        checkpoint = _checkpoint_columns(done)
        transitions.set_stage(self.session, self.job_id, self.owner, stage, **checkpoint)
        if isinstance(done, Transcript):
            self.events.publish(self.job_id, event_log.TRANSCRIPT, text=done.text)
        self.events.publish(self.job_id, event_log.STAGE, stage=stage.value)

    def delta(self, text: str) -> None:
        """Appends a piece of the reply to the job's event stream."""
        self.events.publish(self.job_id, event_log.DELTA, text=text)


def _finished(job_id: str, session: Session) -> None:
    """Appends the final event, read back from the row so it says what the row says."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or not job.job_status.terminal:
        return
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    _events().publish(job_id, event_log.DONE, status=job.status, error=error)


@app.task(name="worker.run_job", acks_late=True)
def run_job(job_id: str) -> None:
    """Runs one job by id; a job that is finished or held by a live worker is left alone."""
    owner = lease_keeper.worker_id()
    with _sessions()() as session:
        claimed = transitions.claim(
            session,
            job_id,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        if claimed is transitions.ClaimOutcome.EXHAUSTED:
            _finished(job_id, session)
        if claimed is not transitions.ClaimOutcome.CLAIMED:
            _LOGGER.info("job not run job_id=%s claim=%s", job_id, claimed.value)
            return
        job = session.get(Job, job_id)
        assert job is not None
        _LOGGER.info("job running job_id=%s attempt=%d", job_id, job.attempts)
        _events().publish(
            job_id, event_log.STATUS, status=JobStatus.RUNNING.value, attempt=job.attempts
        )
        lease_keeper.hold_lease(job_id, owner)
        try:
            _run(session, job, owner)
        except VoiceChatError as error:
            _LOGGER.info("job failed job_id=%s code=%s", job_id, error.code)
            transitions.fail(session, job_id, error.code, error.detail)
        except SoftTimeLimitExceeded:
            timed_out = JobTimedOut(f"The job ran past {settings.task_soft_time_limit} seconds.")
            _LOGGER.warning("job timed out job_id=%s", job_id)
            transitions.fail(session, job_id, timed_out.code, timed_out.detail)
        except Exception:
            _LOGGER.exception("job crashed job_id=%s", job_id)
            session.rollback()
            transitions.fail(session, job_id, "internal_error", "The worker failed on this job.")
        finally:
            lease_keeper.hold_lease(None, owner)
        _finished(job_id, session)


def _run(session: Session, job: Job, owner: str) -> None:
    try:
        pipeline = runtime.get_pipeline(settings)
    except VoiceChatError:
        raise
    except Exception as error:
        message = "The worker's engines failed to load; see the worker log."
        raise EngineUnavailable(message) from error
    outcome = pipeline.run(_job_input(session, job), RowProgress(session, job.id, owner))
    results = _results(job, outcome)
    if outcome.audio is not None:
        # Written before the row says so; a crash in between leaves a file the next attempt
        # replaces atomically under the same name, so there is never a second reply.
        name = FileStore(settings.results_dir).write(job.id, outcome.audio.to_wav())
        results.update(audio_columns(outcome.audio, name))
        _events().publish(job.id, event_log.AUDIO, seconds=results["reply_audio_seconds"])
    turns = []
    if job.conversation_id and job.operation == Operation.CHAT.value:
        prompt = outcome.transcript.text if outcome.transcript else job.transcript or job.input_text
        turns = [("user", prompt or ""), ("assistant", outcome.reply_text)]
    if not transitions.succeed(session, job.id, owner, turns=turns, **results):
        _LOGGER.warning("job lease lost before it finished job_id=%s", job.id)
        return
    _LOGGER.info("job succeeded job_id=%s attempt=%d", job.id, job.attempts)


def _results(job: Job, outcome: Outcome) -> dict[str, Any]:
    """The row's final columns from the stages this run did; checkpointed ones are kept."""
    results: dict[str, Any] = {"reply_text": outcome.reply_text}
    if outcome.transcript is not None:
        transcribing = job.operation == Operation.TRANSCRIBE.value
        results.update(transcript_columns(outcome.transcript, with_segments=transcribing))
    if outcome.reply is not None:
        results.update(reply_columns(outcome.reply))
    return results


def _job_input(session: Session, job: Job) -> JobInput:
    """What the pipeline needs from the row: input, options, history and checkpoints."""
    audio_path = None
    if job.input_audio_file:
        audio_path = Path(FileStore(settings.uploads_dir).path(job.input_audio_file))
    options = dict(job.options or {})
    history = list(job.history or [])
    if job.conversation_id:
        conversation = session.get(Conversation, job.conversation_id)
        if conversation is not None and conversation.system is not None:
            options.setdefault("system", conversation.system)
        history += queries.conversation_messages(session, job.conversation_id)
    return JobInput(
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
