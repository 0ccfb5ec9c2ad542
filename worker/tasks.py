"""Celery tasks: claim the job row, drive the pipeline, checkpoint each stage, record the outcome.

Delivery is at-least-once (acks_late): the claim is a conditional UPDATE, so a second delivery of
a running or finished job does nothing, and a redelivered job resumes after its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from models import event_log, metrics, queries, storage, transitions, webhooks
from models.errors import EngineUnavailable, JobTimedOut, VoiceChatError
from models.logging_config import JOB_ID
from models.tables import Conversation, Job, JobStatus, Operation, ReplyFormat, Stage
from worker import clients, lease_keeper, runtime
from worker.celery_app import app, settings
from worker.engines import Audio, Reply, Transcript
from worker.pipeline import JobInput, Outcome
from worker.webhooks import queue_delivery

_LOGGER = logging.getLogger(__name__)

# A claim the database could not take is tried again after 1, 2, 4 ... s, at most this apart:
# the job is still queued and its message is about to be acknowledged, so without a retry it
# would wait for nothing (its sent mark tells the reconciler that it has a message).
CLAIM_RETRY_MAX_SECONDS = 30

# Reply text after its first piece is sent at most this often: one event per token (a Redis round
# trip, an SSE write in the API) cost 10% of the generation's speed on two cores (bench/chat.py);
# 20 a second still read as typing, and a slower model (a 7B on an Orin) streams token by token.
DELTA_INTERVAL_SECONDS = 0.05

# A job id no row has: the warm-up's claim matches nothing.
_WARM_UP_ID = "0" * 32


def warm_up_connections() -> None:
    """Opens this child's connections with a claim that matches no row, so the first job does
    not pay for them and the statements' compilation (about 30 ms)."""
    with clients.sessions()() as session:
        _claim(session, _WARM_UP_ID)
    clients.events().warm()


def _claim(session: Session, job_id: str) -> transitions.Claim:
    return transitions.claim(
        session,
        job_id,
        owner=lease_keeper.worker_id(),
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
    )


def transcript_columns(transcript: Transcript, *, with_segments: bool = False) -> dict[str, Any]:
    """A transcript as the row's columns; `with_segments` for a transcription job's answer."""
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
    """The language model's reply as the row's columns."""
    return {
        "reply_text": reply.text,
        "generate_s": reply.seconds,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "finish_reason": reply.finish_reason,
    }


def audio_columns(audio: Audio, file_name: str) -> dict[str, Any]:
    """The spoken reply, stored in the result store as `file_name`, as the row's columns."""
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
    """Writes stages, checkpoints and events as the holder of the attempt's lease: a refused write
    stops the attempt (LeaseLost), and each write is where a job asked to stop does so."""

    def __init__(self, session: Session, held: lease_keeper.Held, job: Job) -> None:
        self.session = session
        self.held = held
        self.lease = held.lease
        self.events = clients.events()
        self.claimed_stage = job.stage  # the claim wrote it: entering it takes no write
        running = {"status": JobStatus.RUNNING.value, "attempt": self.lease.attempt}
        # The attempt's `running`, held back to go out with its first stage in one round trip.
        self.starting: list[tuple[str, dict[str, Any]]] = [(event_log.STATUS, running)]
        self.sentences: list[str] = []
        self.cancel = lease_keeper.CancelWatch(self.events.redis, held, looked=True)
        self.generated: list[str] = []  # this attempt's reply so far, kept if it is canceled
        self.unsent: list[str] = []  # reply text not in the event stream yet
        self.next_delta = 0.0  # when reply text may be sent again (the first piece: at once)
        self.started = time.perf_counter()

    def _check(self, *, cancel: bool = True) -> None:
        if self.held.lost.is_set():
            raise transitions.LeaseLost(self.lease.job_id)
        if cancel and self.cancel.requested():
            raise transitions.CancelRequested(self.lease.job_id)

    def tell(self, event_type: str, **data: Any) -> None:
        """Appends an event of this attempt, unless its lease is lost or it was asked to stop."""
        self._check()
        self._send((event_type, data))

    def tell_running(self) -> None:
        """Sends the attempt's `running` if nothing went out yet (it entered no stage)."""
        if self.starting:
            self._send()

    def _send(self, *events: tuple[str, dict[str, Any]]) -> None:
        """Appends events under the lease, asked to stop or not, after a held-back `running`."""
        self._check(cancel=False)
        job_id, attempt = self.lease.job_id, self.lease.attempt
        appended = self.events.publish_all(job_id, [*self.starting, *events], attempt=attempt)
        self.starting = []
        if appended is event_log.Append.FENCED:
            raise transitions.LeaseLost(self.lease.job_id)

    def enter(self, stage: Stage, done: Transcript | Reply | None = None) -> None:
        """Checkpoints the stage with the previous stage's result, then tells (the claim wrote
        the first stage and looked at the stop flag: it is told only)."""
        self.flush()
        _LOGGER.info("job stage job_id=%s stage=%s", self.lease.job_id, stage.value)
        checkpoint = _checkpoint_columns(done)
        written, self.claimed_stage = self.claimed_stage, None
        if stage.value != written or checkpoint:
            if not transitions.set_stage(self.session, self.lease, stage, **checkpoint):
                raise transitions.LeaseLost(self.lease.job_id)
            if isinstance(done, Reply):
                self.generated.clear()  # the checkpoint holds the reply now
            # After the checkpoint: a job canceled here keeps what its last stage made.
            if self.cancel.requested(now=True):
                raise transitions.CancelRequested(self.lease.job_id)
        if isinstance(done, Transcript):
            self.tell(event_log.TRANSCRIPT, text=done.text)
        self.tell(event_log.STAGE, stage=stage.value)

    def delta(self, text: str) -> None:
        """Takes a piece of the reply for the event stream; a lost lease stops the generation
        here, at the next token, and so does a cancel once what it generated is sent."""
        self._check(cancel=False)
        self.unsent.append(text)
        canceled = self.cancel.requested()
        if canceled or time.perf_counter() >= self.next_delta:
            self.flush()
        if canceled:
            raise transitions.CancelRequested(self.lease.job_id)

    def flush(self) -> None:
        """Sends the reply text not sent yet as one `delta` event."""
        if not self.unsent:
            return
        text = "".join(self.unsent)
        self._send((event_log.DELTA, {"text": text}))
        self.unsent.clear()
        self.generated.append(text)  # what a cancel keeps is what was streamed
        self.next_delta = time.perf_counter() + DELTA_INTERVAL_SECONDS

    def sentence(self, index: int, text: str, audio: Audio) -> None:
        """Stores one spoken sentence under this attempt's own name, then tells the job's log."""
        self._check()
        name = storage.sentence_name(self.lease.job_id, self.lease.attempt, index)
        self.sentences.append(
            clients.stores().results.write(name, audio.samples.astype("<i2").tobytes())
        )
        if index == 0:
            metrics.FIRST_AUDIO_SECONDS.observe(time.perf_counter() - self.started)
        self.tell(
            event_log.SPEECH,
            index=index,
            attempt=self.lease.attempt,
            text=text,
            seconds=round(audio.duration, 3),
            rate=audio.sample_rate,
        )

    def forget_sentences(self) -> None:
        """Deletes this attempt's sentence files, and those of earlier attempts whose process was
        killed (the reply's WAV holds them all, or the attempt ended without one)."""
        results = clients.stores().results
        for name in self.sentences:
            results.delete(name)
        self.sentences.clear()
        for attempt in range(1, self.lease.attempt):
            index = 0  # an attempt's sentences are numbered from 0 without a gap
            while results.exists(name := storage.sentence_name(self.lease.job_id, attempt, index)):
                results.delete(name)
                index += 1


@app.task(name="worker.run_job", acks_late=True)
def run_job(job_id: str) -> None:
    """Runs one job by id (each line logged meanwhile carries it); a finished or held job is
    left alone."""
    token = JOB_ID.set(job_id)
    try:
        _run_job(job_id)
    finally:
        JOB_ID.reset(token)


def _run_job(job_id: str) -> None:
    with clients.sessions()() as session:
        try:
            claim = _claim(session, job_id)
        except DBAPIError as error:
            if not (error.connection_invalidated or isinstance(error, OperationalError)):
                raise
            # The database went away: the job is still queued (or running on a lease nobody
            # renews, should the claim's answer be lost, which the reconciler releases).
            countdown = min(2**run_job.request.retries, CLAIM_RETRY_MAX_SECONDS)
            _LOGGER.warning(
                "claim failed, retried job_id=%s in_s=%d error=%s",
                job_id,
                countdown,
                type(error.orig).__name__,
            )
            raise run_job.retry(countdown=countdown, max_retries=None) from error
        if claim.outcome in (transitions.ClaimOutcome.EXHAUSTED, transitions.ClaimOutcome.CANCELED):
            event_log.announce_end(session, clients.events(), job_id, webhooks=queue_delivery)
        if claim.lease is None:
            _LOGGER.info("job not run job_id=%s claim=%s", job_id, claim.outcome.value)
            return
        # Every claim, not only the first: one whose worker died before it queued the event
        # gets it from the next; the delivery task sends each event's `webhook-id` once.
        webhooks.announce(session, job_id, webhooks.STARTED, queue_delivery)
        assert claim.job is not None
        held = lease_keeper.Held(claim.lease)
        lease_keeper.hold_lease(held)
        try:
            progress = RowProgress(session, held, claim.job)
            ended = _attempt(session, progress, claim.job)
            progress.forget_sentences()
        finally:
            lease_keeper.hold_lease(None)
        if ended:  # the write that ended the job refreshed `claim.job`: no read needed
            event_log.announce_end(
                session, clients.events(), job_id, webhooks=queue_delivery, ended=claim.job
            )


def _attempt(session: Session, progress: RowProgress, job: Job) -> bool:
    """Runs one claimed attempt and records its outcome; returns whether it ended the job (an
    attempt that loses its lease writes nothing more)."""
    lease = progress.lease
    _LOGGER.info("job running job_id=%s attempt=%d", lease.job_id, lease.attempt)
    try:
        return _run(session, progress, job)
    except transitions.LeaseLost:
        session.rollback()
        _LOGGER.warning("job lease lost job_id=%s attempt=%d", lease.job_id, lease.attempt)
        return False
    except transitions.CancelRequested:
        session.rollback()
        return _canceled(session, progress)
    except VoiceChatError as error:
        _LOGGER.info("job failed job_id=%s code=%s", lease.job_id, error.code)
        return _failed(session, progress, error.code, error.detail)
    except SoftTimeLimitExceeded:
        timed_out = JobTimedOut(f"The job ran past {settings.task_soft_time_limit} seconds.")
        _LOGGER.warning("job timed out job_id=%s", lease.job_id)
        return _failed(session, progress, timed_out.code, timed_out.detail)
    except Exception:
        _LOGGER.exception("job crashed job_id=%s", lease.job_id)
        session.rollback()
        return _failed(session, progress, "internal_error", "The worker failed on this job.")


def _failed(session: Session, progress: RowProgress, code: str, message: str) -> bool:
    """Ends the job failed (its `running` told first if not yet); returns if the lease allowed."""
    with contextlib.suppress(transitions.LeaseLost):  # then `fail` changes nothing either
        progress.tell_running()
    return transitions.fail(session, progress.lease, code, message)


def _canceled(session: Session, progress: RowProgress) -> bool:
    """Ends a job asked to stop `canceled`, keeping the reply text generated so far; returns
    whether the lease allowed it."""
    lease = progress.lease
    kept = {"reply_text": "".join(progress.generated)} if progress.generated else {}
    if not transitions.cancel_held(session, lease, **kept):
        _LOGGER.warning("job lease lost job_id=%s attempt=%d", lease.job_id, lease.attempt)
        return False
    _LOGGER.info("job canceled job_id=%s attempt=%d", lease.job_id, lease.attempt)
    return True


def _run(session: Session, progress: RowProgress, job: Job) -> bool:
    """Drives the pipeline on the claimed row and records its results through the fenced
    `succeed`."""
    lease = progress.lease
    try:
        pipeline = runtime.get_pipeline(settings)
    except VoiceChatError:
        raise
    except Exception as error:
        message = "The worker's engines failed to load; see the worker log."
        raise EngineUnavailable(message) from error
    with _recording(job) as audio_path:
        outcome = pipeline.run(_job_input(session, job, audio_path), progress)
    _time_stages(outcome)
    progress.flush()
    progress.tell_running()  # a run resumed past every stage has told nothing yet
    results = _results(job, outcome)
    replies = clients.stores().results
    name = None
    turns = []
    if job.conversation_id and job.operation == Operation.CHAT.value:
        prompt = outcome.transcript.text if outcome.transcript else job.transcript or job.input_text
        turns = [("user", prompt or ""), ("assistant", outcome.reply_text)]
    try:
        if outcome.audio is not None:
            # Under this attempt's own name: only the fenced `succeed` makes it the job's reply.
            reply = storage.reply_name(job.id, lease.attempt)
            name = replies.write(reply, outcome.audio.to_wav())
            results.update(audio_columns(outcome.audio, name))
            progress.tell(event_log.AUDIO, seconds=results["reply_audio_seconds"])
        # The last stage's end is a boundary too: `succeed` raises CancelRequested on a stop.
        if not transitions.succeed(session, lease, turns=turns, **results):
            raise transitions.LeaseLost(job.id)
    except (transitions.LeaseLost, transitions.CancelRequested):
        if name is not None:
            replies.delete(name)  # no row will ever point at it
        raise
    _LOGGER.info("job succeeded job_id=%s attempt=%d", job.id, lease.attempt)
    return True


def _time_stages(outcome: Outcome) -> None:
    timed = ("transcribe", outcome.transcript), ("generate", outcome.reply)
    for stage, result in (*timed, ("synthesize", outcome.audio)):
        if result is not None:
            metrics.STAGE_SECONDS.labels(stage).observe(result.seconds)


def _results(job: Job, outcome: Outcome) -> dict[str, Any]:
    """The row's final columns from the stages this run did; checkpointed ones are kept."""
    results: dict[str, Any] = {"reply_text": outcome.reply_text}
    if outcome.transcript is not None:
        transcribing = job.operation == Operation.TRANSCRIBE.value
        results.update(transcript_columns(outcome.transcript, with_segments=transcribing))
    if outcome.reply is not None:
        results.update(reply_columns(outcome.reply))
    return results


def _recording(job: Job) -> contextlib.AbstractContextManager[Path | None]:
    """The job's uploaded recording as a file while the pipeline runs (None: a text prompt, or
    a checkpointed transcript)."""
    resumed = job.transcript is not None and job.operation == Operation.CHAT.value
    if job.input_audio_file is None or resumed:
        return contextlib.nullcontext()
    return clients.stores().uploads.as_file(job.input_audio_file)


def _job_input(session: Session, job: Job, audio_path: Path | None) -> JobInput:
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
