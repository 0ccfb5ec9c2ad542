"""The job routes: submit a prompt, read a job, fetch its spoken reply, list jobs."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import soundfile as sf
from flask import Blueprint, Response, current_app, g, jsonify, request, send_file, url_for
from sqlalchemy.exc import SQLAlchemyError

from api import idempotency
from api.access import caller_id, visible
from api.cancellation import cancel
from api.follow import wait_for
from api.held_requests import hold, try_hold
from api.limits import check_capacity
from api.schemas import AudioQuery, JobList, JobListQuery, JobOptions, JobView, is_resource_id
from api.speech_stream import stream_reply
from api.submission import Submission, parse_submission
from api.validation import single_values, validate
from models import event_log, queries, storage, transitions, webhooks
from models.errors import (
    AudioExpired,
    AudioNotFound,
    ContextLengthExceeded,
    ConversationNotFound,
    InvalidHeader,
    JobNotFinished,
    JobNotFound,
    VoiceChatError,
    WebhookSecretMissing,
)
from models.settings import Settings
from models.tables import Conversation, InputKind, Job, JobStatus, ReplyFormat, new_job_id

_LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)


def _load(job_id: str) -> Job:
    job: Job | None = g.db.get(Job, job_id) if is_resource_id(job_id) else None
    if job is None or not visible(job.api_key_id):  # another key's job is as unknown as none
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return job


def _own_conversation(conversation_id: str) -> bool:
    conversation: Conversation | None = g.db.get(Conversation, conversation_id)
    return conversation is not None and visible(conversation.api_key_id)


def submit(job: Job, audio: bytes | None = None) -> Job:
    """Stores a new job (and its recording), commits the row, and enqueues it.

    Raises:
        QueueFull: The queue holds MAX_QUEUE_DEPTH jobs; nothing is stored.
        TooManyUnfinishedJobs: The caller has its number of unfinished jobs; nothing is stored.
        BrokerUnavailable: The queue could not take it; the job is recorded failed.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    check_capacity(g.db, current_app.extensions["voicechat.redis"], settings)
    uploads: storage.Store = current_app.extensions["voicechat.uploads"]
    job.api_key_id = caller_id()  # the only key that will see it
    if audio is not None:
        # The file is stored before the row exists, so a queued row always has its audio.
        job.input_kind = InputKind.AUDIO.value
        job.input_audio_file = uploads.write(storage.upload_name(job.id), audio)
    g.db.add(job)
    try:
        g.db.commit()
    except Exception:
        if job.input_audio_file:  # no row will ever point at it
            with contextlib.suppress(OSError, SQLAlchemyError):
                uploads.delete(job.input_audio_file)
        raise
    try:
        current_app.extensions["voicechat.queue"].enqueue(job.id)
    except Exception as error:
        # Nothing will ever run this job: end it now rather than leave it queued forever.
        code = error.code if isinstance(error, VoiceChatError) else "internal_error"
        transitions.fail_unclaimed(g.db, job.id, code, "The job could not be queued.")
        queue = current_app.extensions["voicechat.queue"]
        events = current_app.extensions["voicechat.events"]
        event_log.announce_end(g.db, events, job.id, webhooks=queue.send_webhook)
        raise
    _LOGGER.info(
        "job submitted job_id=%s operation=%s input=%s reply=%s",
        job.id,
        job.operation,
        job.input_kind,
        job.reply_format,
    )
    return job


def check_webhook(options: JobOptions, settings: Settings) -> None:
    """Checks a job's webhook past its form: its host's addresses, and a secret to sign with.

    Raises:
        InvalidWebhookUrl: The host does not resolve.
        WebhookTargetNotAllowed: It resolves to a non-public address (without
            WEBHOOK_ALLOW_PRIVATE).
        WebhookSecretMissing: The service runs open and WEBHOOK_SECRET is unset.
    """
    if options.webhook is None:
        return
    if caller_id() is None and not settings.webhook_secret:
        raise WebhookSecretMissing(
            "The service runs without API keys and WEBHOOK_SECRET is unset: no secret would "
            "sign this job's webhook.",
            field="webhook",
        )
    webhooks.check_target(options.webhook, allow_private=settings.webhook_allow_private)


def finished_or_fail(job: Job) -> Job:
    """Returns a job that ended; a waiting route reports the pipeline's verdict on a too-long
    prompt as the request's own error (422 `context_length_exceeded`)."""
    if job.error_code == ContextLengthExceeded.code:
        raise ContextLengthExceeded(job.error_message or "", job_id=job.id)
    return job


def preferred_wait(settings: Settings) -> int | None:
    """Reads RFC 7240's `Prefer: wait=N` (Replicate's convention), capped at MAX_WAIT_SECONDS.

    Raises:
        InvalidHeader: `wait` is not a whole number of seconds.
    """
    for preference in request.headers.get("Prefer", "").split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not (value.isascii() and value.isdigit()) or len(value) > 6:
            raise InvalidHeader("Prefer: wait must be a whole number of seconds, e.g. wait=30.")
        return min(int(value), settings.max_wait_seconds)
    return None


@blueprint.post("/v1/jobs")
def create_job() -> Response:
    """Validates a prompt, stores it and enqueues it; answers 202 at once, or with
    `Prefer: wait=N`, 200 with the finished job if it ends within N seconds (the wait is
    declined, 202 at once, when this process holds MAX_HELD_REQUESTS already). With an
    `Idempotency-Key` the same request again answers with the job it made (api/idempotency.py)."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    key = idempotency.requested_key(request)
    submission = parse_submission(request, settings)
    wait = preferred_wait(settings)
    job = _new_job(submission)
    held = None
    if key is not None:
        print_ = idempotency.fingerprint(request, job, submission.audio)
        earlier = idempotency.claim(g.db, key, print_, settings)
        if isinstance(earlier, Job):
            response = _job_answer(earlier, 202)
            response.headers[idempotency.REPLAYED_HEADER] = "true"
            return response
        held = earlier
        idempotency.bind(g.db, held, job.id)
    try:
        submit(job, submission.audio)
    except BaseException:
        if held is not None:
            idempotency.release(g.db, held)
        raise
    status = 202
    # Past MAX_HELD_REQUESTS the wait is declined (RFC 7240): 202 at once, no Preference-Applied.
    place = try_hold() if wait else None
    if place is not None:
        with place:
            finished = wait_for(job.id, wait or 0)
        if finished is not None:
            job, status = finished_or_fail(finished), 200
    response = _job_answer(job, status)
    if wait == 0 or place is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


def _new_job(submission: Submission) -> Job:
    """The job a validated submission asks for (its conversation checked), not yet stored."""
    options = submission.options
    if options.conversation_id is not None and not _own_conversation(options.conversation_id):
        raise ConversationNotFound(
            f"No conversation has the id {options.conversation_id!r}.", field="conversation_id"
        )
    check_webhook(options, current_app.extensions["voicechat.settings"])
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED.value,
        reply_format=(options.reply or ReplyFormat.TEXT).value,
        options=options.generation_options(),
        conversation_id=options.conversation_id,
        input_kind=InputKind.TEXT.value,
        input_text=submission.text,
        webhook_url=options.webhook,
        webhook_events=options.webhook_event_names(),
    )
    if submission.audio_info is not None:
        job.input_audio_seconds = round(submission.audio_info.seconds, 3)
    return job


def _job_answer(job: Job, status: int) -> Response:
    response = jsonify(JobView.of(job).model_dump(mode="json"))
    response.status_code = status
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response


@blueprint.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Returns a job's current state."""
    return jsonify(JobView.of(_load(job_id)).model_dump(mode="json"))


@blueprint.post("/v1/jobs/<job_id>/cancel")
@blueprint.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancels a job: 200 with the job once canceled (at once while queued, or before), 202
    with it while its worker is stopping; 409 `job_finished` once it succeeded or failed."""
    job, status = cancel(g.db, _load(job_id))
    response = jsonify(JobView.of(job).model_dump(mode="json"))
    response.status_code = status
    return response


@blueprint.get("/v1/jobs/<job_id>/audio")
def get_job_audio(job_id: str) -> Response:
    """Returns the spoken reply as a 16-bit PCM mono WAV (or raw PCM); while a voice job runs,
    streams it sentence by sentence as the worker speaks it."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    fields = single_values(request.args, "query parameter")
    with_header = validate(AudioQuery, fields, settings, from_strings=True).format == "wav"
    job = _load(job_id)
    if not job.job_status.terminal:
        if job.reply_format != ReplyFormat.VOICE.value:
            raise JobNotFinished(f"Job {job_id} is {job.status}; its audio is not ready yet.")
        # The attempt running now, or the next one for a job still queued.
        attempt = job.attempts if job.status == JobStatus.RUNNING.value else job.attempts + 1
        return stream_reply(job.id, attempt, hold(), with_header=with_header)
    results: storage.Store = current_app.extensions["voicechat.results"]
    name = job.reply_audio_file
    if name is not None and job.expired_at is not None:
        raise AudioExpired(f"Job {job_id}'s spoken reply was deleted when it expired.")
    if name is None or not results.exists(name):
        raise AudioNotFound(f"Job {job_id} has no spoken reply.")
    if not with_header:
        samples, rate = sf.read(io.BytesIO(results.read(name)), dtype="int16")
        response = Response(np.asarray(samples, dtype="<i2").tobytes(), mimetype="audio/pcm")
        response.headers["X-Sample-Rate"] = str(rate)
        return response
    path = results.local_path(name)
    # A reply's stored name is its attempt's and is never rewritten: a fine ETag either way.
    return send_file(
        path if path is not None else io.BytesIO(results.read(name)),
        mimetype="audio/wav",
        download_name=f"{job_id}.wav",
        conditional=True,
        etag=True if path is not None else name,
        max_age=3600,
    )


@blueprint.get("/v1/jobs")
def list_jobs() -> Response:
    """Lists jobs newest first, with an opaque cursor for the next page."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    fields = single_values(request.args, "query parameter")
    query = validate(JobListQuery, fields, settings, from_strings=True)
    page = queries.list_jobs(
        g.db, owner=caller_id(), status=query.status, limit=query.limit, cursor=query.cursor or None
    )
    listing = JobList(data=[JobView.of(job) for job in page.jobs], next_cursor=page.next_cursor)
    return jsonify(listing.model_dump(mode="json"))
