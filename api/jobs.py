"""The job routes: submit a prompt, read a job, fetch its spoken reply, list jobs."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf
from flask import Blueprint, Response, current_app, g, jsonify, request, send_file, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from api import idempotency
from api.access import caller_id, visible
from api.cancellation import cancel, erase
from api.conversations import visible_conversation
from api.follow import wait_for
from api.held_requests import hold, try_hold
from api.limits import add_within_limit, check_queue
from api.openapi.declare import Query, Schema, answer, documented, family, ref, schema_ref
from api.preferences import PREFER, preferred_wait
from api.request_validation import validate_query
from api.schemas import AudioQuery, JobList, JobListQuery, is_resource_id
from api.speech_stream import stream_reply
from api.submission import AUDIO_MEDIA_TYPES, Submission, parse_submission
from models import event_log, queries, storage, transitions, webhooks
from models.errors import (
    AudioExpired,
    AudioNotFound,
    BadRequest,
    BrokerUnavailable,
    ContextLengthExceeded,
    ConversationNotFound,
    EmptyText,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientStorage,
    InvalidAudio,
    InvalidCursor,
    InvalidOption,
    InvalidWebhookUrl,
    JobFinished,
    JobNotFinished,
    JobNotFound,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    ServerBusy,
    ServiceUnavailable,
    TextTooLong,
    TooManyUnfinishedJobs,
    UnsupportedMediaType,
    VoiceChatError,
    WebhookSecretMissing,
    WebhookTargetNotAllowed,
)
from models.job_view import JobView
from models.queue import JobQueue
from models.settings import Settings
from models.tables import InputKind, Job, JobStatus, ReplyFormat, new_job_id

_LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)

WAV = {"type": "string", "format": "binary"}
LOCATION = {"schema": {"type": "string", "format": "uri-reference"}}
AUDIO_REPLY = {
    "audio/wav": {"schema": {**WAV, "description": "16-bit PCM mono WAV."}},
    "audio/pcm": {"schema": {**WAV, "description": "The same samples, without a header."}},
}


def _load(job_id: str) -> Job:
    job: Job | None = g.db.get(Job, job_id) if is_resource_id(job_id) else None
    if job is None or not visible(job.api_key_id):  # another key's job is as unknown as none
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return job


def queued_job(reply_format: ReplyFormat, **columns: Any) -> Job:
    """A new job, not yet stored: a fresh id, queued, a text input unless `submit` gets audio."""
    return Job(
        id=new_job_id(),
        status=JobStatus.QUEUED.value,
        reply_format=reply_format.value,
        input_kind=InputKind.TEXT.value,
        **columns,
    )


def submit(
    job: Job,
    audio: bytes | None = None,
    extension: str = "wav",
    also: Callable[[Connection], object] | None = None,
) -> Job:
    """Stores a new job (and its recording, with its container's `extension`), commits the
    row (and what `also` writes, in its transaction), and enqueues it; a job the queue could not
    take is recorded failed."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    queue: JobQueue = current_app.extensions["voicechat.queue"]
    check_queue(queue, settings)
    uploads: storage.Store = current_app.extensions["voicechat.uploads"]
    job.api_key_id = caller_id()  # the only key that will see it
    if audio is not None:
        # The file is stored before the row exists, so a queued row always has its audio.
        job.input_kind = InputKind.AUDIO.value
        job.input_audio_file = uploads.write(storage.upload_name(job.id, extension), audio)
    try:
        add_within_limit(g.db, job, settings, also)
        g.db.commit()
    except Exception:
        if job.input_audio_file:  # no row will ever point at it
            with contextlib.suppress(OSError, SQLAlchemyError):
                uploads.delete(job.input_audio_file)
        raise
    try:
        queue.enqueue(job.id)
    except Exception as error:
        # Nothing will ever run this job: end it now rather than leave it queued forever.
        code = error.code if isinstance(error, VoiceChatError) else "internal_error"
        transitions.fail_unclaimed(g.db, job.id, code, "The job could not be queued.")
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


def _submitted(description: str) -> Schema:
    applied = {
        "description": "With `Prefer: wait=N`: `wait=` and the seconds waited at most (N, capped "
        "at MAX_WAIT_SECONDS, here {max_wait_seconds}).",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    }
    return answer(
        description,
        "JobView",
        headers={
            "Location": {"description": "Path of the job, `/v1/jobs/{job_id}`.", **LOCATION},
            "Preference-Applied": applied,
            "Idempotent-Replayed": ref("headers", "IdempotentReplayed"),
        },
    )


# A form carries the webhook's events as one comma-separated field, never repeated.
_EVENTS = {"webhook_events": {"style": "form", "explode": False}}
_RAW_AUDIO = {
    **WAV,
    "description": "The recording as the whole body: a WAV, WebM, Ogg, MP3, MP4/M4A or FLAC "
    "file (decided by its bytes, not this label) of at most MAX_AUDIO_SECONDS "
    "({max_audio_seconds} s here).",
}
# gunicorn's limit on the request line, which api/gunicorn_conf.py sets from here: a raw
# recording's options travel in the query string, and a longer line is answered 414.
REQUEST_LINE_BYTES = 4094
_URI_TOO_LONG = answer(
    "The request line is over {request_line_bytes} bytes: gunicorn's own HTML page, before the "
    "service sees the request. Send long options in the body.",
    body={"text/html": {"schema": {"type": "string"}}},
)
# The multipart part's media types (OpenAPI's comma-separated `contentType`); any label is taken.
UPLOAD_MEDIA_TYPES = "audio/wav, audio/webm, audio/ogg, audio/mpeg, audio/mp4, audio/flac"


@blueprint.post("/v1/jobs")
@documented(
    answers={
        200: _submitted(
            "With `Prefer: wait`: the job ended within the wait (a job that failed with "
            "`context_length_exceeded` is answered with 422 instead)."
        ),
        202: _submitted(
            "The job is queued (or, with `Prefer: wait`, still going when the wait ran out, or "
            "the wait was declined, without `Preference-Applied`; or it is the job an earlier "
            "request with the same `Idempotency-Key` made, as it is now)."
        ),
        414: _URI_TOO_LONG,
    },
    errors=(
        *family(BadRequest),
        ConversationNotFound,
        IdempotencyKeyInFlight,
        PayloadTooLarge,
        *family(UnsupportedMediaType),
        InvalidOption,
        EmptyText,
        TextTooLong,
        *family(InvalidAudio),
        ContextLengthExceeded,
        InvalidWebhookUrl,
        WebhookTargetNotAllowed,
        WebhookSecretMissing,
        IdempotencyKeyReused,
        RateLimited,
        TooManyUnfinishedJobs,
        QueueFull,
        BrokerUnavailable,
        InsufficientStorage,
    ),
    notes={422: "With `Prefer: wait`, a job that failed too is named by `job_id`."},
    facts={"request_line_bytes": REQUEST_LINE_BYTES},
    parameters=(
        PREFER,
        idempotency.PARAMETER,
        Query("JobOptions", "Used with a raw recording body only (checked with any)."),
    ),
    body={
        "required": True,
        "content": {
            "application/json": {"schema": schema_ref("TextJobRequest")},
            "multipart/form-data": {
                "schema": schema_ref("UploadJobRequest"),
                "encoding": {"audio": {"contentType": UPLOAD_MEDIA_TYPES}, **_EVENTS},
            },
            "application/x-www-form-urlencoded": {
                "schema": schema_ref("TextJobForm"),
                "encoding": _EVENTS,
            },
            **{media_type: {"schema": _RAW_AUDIO} for media_type in sorted(AUDIO_MEDIA_TYPES)},
        },
    },
)
def create_job() -> Response:
    """Submit a prompt.

    Stores and queues the prompt and answers at once with 202; poll the job at `Location`, or
    follow its `events_url`, until its status is terminal. With `Prefer: wait=N` (RFC 7240) the
    request is held up to N seconds, and a job that ends by then is answered with 200; the wait
    is declined while the process holds MAX_HELD_REQUESTS requests open.

    The options travel in the body for JSON and forms, and as query parameters for a raw
    recording body; the request line holds at most {request_line_bytes} bytes (414 beyond), so
    a long `system` or `webhook` goes in a multipart body with the recording as its `audio`
    part. A recording's length is measured before anything is decoded. `application/*+json` is
    read as JSON.

    With `webhook`, the job's `webhook_events` are POSTed there, signed, as this document's
    `webhooks` describe; a failed delivery is retried up to WEBHOOK_MAX_ATTEMPTS times, each
    attempt shown in the job's `webhook.deliveries`.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    key = idempotency.requested_key(request)
    submission = parse_submission(request, settings)
    wait = preferred_wait(settings)
    job = _new_job(submission, settings)
    held = None
    if key is not None:
        request_fingerprint = idempotency.fingerprint(request, job, submission.audio)
        earlier = idempotency.claim(g.db, key, request_fingerprint, settings)
        if isinstance(earlier, Job):
            response = _job_answer(earlier, 202)
            response.headers[idempotency.REPLAYED_HEADER] = "true"
            return response
        held = earlier
    try:
        extension = submission.audio_info.extension if submission.audio_info else "wav"
        named = None
        if held is not None:  # in the job's own transaction
            named = functools.partial(idempotency.bind, held=held, job_id=job.id)
        submit(job, submission.audio, extension, also=named)
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
        if finished is not None and finished.error_code == ContextLengthExceeded.code:
            raise ContextLengthExceeded(finished.error_message or "", job_id=finished.id)
        if finished is not None:
            job, status = finished, 200
    response = _job_answer(job, status)
    if wait == 0 or place is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


def _new_job(submission: Submission, settings: Settings) -> Job:
    """The job a validated submission asks for, its conversation and webhook checked; unstored."""
    options = submission.options
    if options.conversation_id is not None and not visible_conversation(options.conversation_id):
        raise ConversationNotFound(
            f"No conversation has the id {options.conversation_id!r}.", field="conversation_id"
        )
    if options.webhook is not None:
        if caller_id() is None and not settings.webhook_secret:
            raise WebhookSecretMissing(
                "The service runs without API keys and WEBHOOK_SECRET is unset: no secret would "
                "sign this job's webhook.",
                field="webhook",
            )
        webhooks.check_target(options.webhook, networks=settings.webhook_allowed_networks)
    job = queued_job(
        options.reply or ReplyFormat.TEXT,
        options=options.generation_options(),
        conversation_id=options.conversation_id,
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
@documented({200: answer("The job's current state.", "JobView")}, errors=(JobNotFound,))
def get_job(job_id: str) -> Response:
    """Read a job."""
    return jsonify(JobView.of(_load(job_id)).model_dump(mode="json"))


@blueprint.post("/v1/jobs/<job_id>/cancel")
@documented(
    {
        200: answer("The job is canceled (now, or it was already).", "JobView"),
        202: answer("The job is running and its worker was asked to stop.", "JobView"),
    },
    errors=(JobNotFound, JobFinished),
)
def cancel_job(job_id: str) -> ResponseReturnValue:
    """Cancel a job.

    A queued job ends `canceled` at once (200; its event stream ends with `done`, and no worker
    will run it). A running job is asked to stop (202): its worker stops at the next token,
    sentence or stage boundary and ends it `canceled` with `error.code` `canceled`, keeping in
    `result` the reply text made so far (no audio, and no turn in its conversation); its event
    stream ends with `done`. Asking again is harmless. To stop a job and keep nothing of it,
    erase it (`DELETE /v1/jobs/{job_id}`).
    """
    job, status = cancel(g.db, _load(job_id))
    return JobView.of(job).model_dump(mode="json"), status


@blueprint.delete("/v1/jobs/<job_id>")
@documented({204: answer("The job is erased.")}, errors=(JobNotFound, ServiceUnavailable))
def delete_job(job_id: str) -> Response:
    """Erase a job.

    Any job may be erased. A queued one will never run; a running one stops at its worker's
    next token, sentence or stage boundary and writes nothing more. Nothing of the job is kept:
    its row, its event stream, its recording and spoken reply, its `Idempotency-Key` (the same
    key makes a new job), its webhook deliveries and the turns it added to its conversation are
    deleted, and none of its webhooks is sent or retried from then on (one being posted at that
    moment may still arrive). The job then answers 404 `job_not_found` everywhere, here too. To
    stop a job and keep it, cancel it (`POST /v1/jobs/{job_id}/cancel`).
    """
    erase(g.db, _load(job_id))
    return Response(status=204)


@blueprint.get("/v1/jobs/<job_id>/audio")
@documented(
    {
        200: answer("The whole recording, or the stream of it.", body=AUDIO_REPLY),
        206: answer("The requested byte range of the stored recording.", body=AUDIO_REPLY),
        304: answer("Not modified since the copy the client holds."),
    },
    errors=(JobNotFound, AudioNotFound, JobNotFinished, AudioExpired, InvalidOption, ServerBusy),
    notes={409: "A text-reply job has not finished yet."},
    parameters=(Query("AudioQuery"),),
)
def get_job_audio(job_id: str) -> Response:
    """Fetch or stream the spoken reply.

    The reply of a `voice` job (also linked as `result.audio_url`). Once the job succeeded:
    served inline as `{job_id}.wav` with `ETag` and `Last-Modified`, cacheable for an hour;
    conditional and `Range` requests are honoured. While it runs: streamed, each sentence as
    soon as the worker has spoken it (a WAV whose sizes say unknown, `0xFFFFFFFF`, as players
    expect of a stream); the stream ends with the reply, or early if the job fails or starts
    again on another attempt (ask again). A streaming answer holds a place of MAX_HELD_REQUESTS.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    with_header = validate_query(AudioQuery, settings).format == "wav"
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
    response = send_file(
        path if path is not None else io.BytesIO(results.read(name)),
        mimetype="audio/wav",
        download_name=f"{job_id}.wav",
        conditional=True,
        etag=True if path is not None else name,
        max_age=3600,
    )
    # A caller's own reply: a browser may keep it, a shared cache may not (send_file says public).
    response.cache_control.public = False
    response.cache_control.private = True
    return response


@blueprint.get("/v1/jobs")
@documented(
    {200: answer("One page of jobs.", "JobList")},
    errors=(InvalidOption, InvalidCursor),
    parameters=(Query("JobListQuery"),),
)
def list_jobs() -> Response:
    """List jobs.

    Newest first; pass `next_cursor` back as `cursor` (with the same `status`) for the next page.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    query = validate_query(JobListQuery, settings)
    page = queries.list_jobs(
        g.db, owner=caller_id(), status=query.status, limit=query.limit, cursor=query.cursor
    )
    listing = JobList(data=[JobView.of(job) for job in page.jobs], next_cursor=page.next_cursor)
    return jsonify(listing.model_dump(mode="json"))
