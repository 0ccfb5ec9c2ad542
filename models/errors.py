"""The domain's exception hierarchy, each error with a stable machine `code`: mapped to HTTP in
`api/errors.py`, recorded on a failed job's row by the worker.

A class's docstring is what its code means in the OpenAPI document (`{setting}`: its value);
its `code` is its name in snake_case unless the class says otherwise.
"""

from __future__ import annotations

import re
from typing import Any

_BY_CODE: dict[str, type[VoiceChatError]] = {}


class VoiceChatError(Exception):
    """An unexpected failure, logged under the request id (or by the worker, on the job); the
    base of every error the service reports."""

    code = "internal_error"
    title = "Internal error"

    def __init_subclass__(cls, *, title: str, code: str = "") -> None:
        super().__init_subclass__()
        cls.title = title
        cls.code = code or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if _BY_CODE.setdefault(cls.code, cls) is not cls:  # one meaning per code
            raise TypeError(f"{cls.__name__}'s code {cls.code!r} is {_BY_CODE[cls.code]}'s")

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(VoiceChatError, title="Bad request"):
    """The request cannot be parsed at all."""


class MalformedJson(BadRequest, title="Malformed JSON"):
    """The body is not valid JSON or not a JSON object."""


class MalformedMultipart(BadRequest, title="Malformed multipart body"):
    """The multipart body cannot be parsed."""


class ConflictingInput(BadRequest, title="Both text and audio given"):
    """Both `text` and `audio` were sent."""


class MissingInput(BadRequest, title="Neither text nor audio given"):
    """Neither `text` nor `audio` was sent (for a transcription: no single `file` part)."""


class PayloadTooLarge(VoiceChatError, title="Payload too large"):
    """The body is over MAX_UPLOAD_MB ({max_upload_bytes} bytes here)."""


class UnsupportedMediaType(VoiceChatError, title="Unsupported media type"):
    """The Content-Type is not one of the accepted forms."""


class UnsupportedAudioFormat(UnsupportedMediaType, title="Unsupported audio format"):
    """The uploaded bytes are none of the accepted formats (WAV, WebM or Matroska, Ogg, MP3,
    MP4/M4A, FLAC), whatever the label or file name said, or their container cannot be read."""


class NoAudioStream(UnsupportedAudioFormat, title="No audio stream"):
    """The container holds no audio stream (a video without sound, say)."""


class UnsupportedAudioCodec(UnsupportedAudioFormat, title="Unsupported audio codec"):
    """The recording's codec is none of Opus, Vorbis, MP3, AAC, FLAC or ALAC."""


class InvalidInput(VoiceChatError, title="Invalid input"):
    """The request parses but a value in it is unacceptable."""


class EmptyText(InvalidInput, title="Empty text"):
    """The text is blank."""


class TextTooLong(InvalidInput, title="Text too long"):
    """The text is over MAX_TEXT_CHARS ({max_text_chars} here) characters."""


class MessagesTooLong(InvalidInput, title="Chat messages too long"):
    """A chat's messages hold over MAX_CHAT_CHARS ({max_chat_chars} here) characters in all."""


class InvalidOption(InvalidInput, title="Invalid option"):
    """A field, option or query parameter is unknown, repeated, of the wrong type or out of
    range; `field` (`param` on the OpenAI routes) names it."""


class InvalidCursor(InvalidInput, title="Invalid cursor"):
    """The cursor was not made by this service."""


class InvalidAudio(InvalidInput, title="Invalid audio"):
    """The WAV is corrupt, or a recording cannot be decoded (found by the worker: the job
    fails with this code)."""


class TruncatedAudio(InvalidAudio, code="audio_truncated", title="Truncated audio"):
    """The recording stops short of what its container declares: a WAV's data chunk, a WebM
    element, an Ogg page, an MP4 box or an ID3 tag runs past the end, or the packets cover
    less than the duration a FLAC, MP3 (Xing/Info), WebM or MP4 header states."""


class EmptyAudio(InvalidAudio, title="Empty audio"):
    """The recording has no bytes, or no samples (no audio packets)."""


class AudioTooLong(InvalidAudio, title="Audio too long"):
    """The recording is over MAX_AUDIO_SECONDS ({max_audio_seconds} here)."""


class UnsupportedAudioEncoding(InvalidAudio, title="Unsupported audio encoding"):
    """The WAV's sample encoding cannot be decoded."""


class UnsupportedChannelCount(
    InvalidAudio, code="unsupported_audio_channels", title="Too many audio channels"
):
    """The recording has more than MAX_AUDIO_CHANNELS channels."""


class UnsupportedSampleRate(InvalidAudio, title="Unsupported sample rate"):
    """The recording's sample rate is outside MIN_AUDIO_SAMPLE_RATE to MAX_AUDIO_SAMPLE_RATE."""


class TooManyChunks(InvalidAudio, code="audio_too_many_chunks", title="Too many WAV chunks"):
    """The WAV holds more chunks (over 64) before its samples than any real recording does."""


class InvalidWebhookUrl(InvalidInput, title="Invalid webhook URL"):
    """`webhook` is not an http(s) URL with a host and without credentials, of at most 2048
    characters, or its host does not resolve."""


class WebhookTargetNotAllowed(InvalidInput, title="Webhook target not allowed"):
    """The webhook's host resolves to a link-local or other special address, or to a private or
    loopback one outside WEBHOOK_ALLOWED_NETWORKS."""


class WebhookSecretMissing(InvalidInput, title="No webhook secret"):
    """A webhook was asked for while the service runs open and WEBHOOK_SECRET is unset: nothing
    could sign its deliveries."""


class NotFound(VoiceChatError, title="Not found"):
    """No route matches the path."""


class JobNotFound(NotFound, title="Job not found"):
    """No job has this id (or it is another API key's)."""


class ConversationNotFound(NotFound, title="Conversation not found"):
    """No conversation has this id (or it is another API key's)."""


class ModelNotFound(NotFound, title="Model not found"):
    """`model` names no model of this route (see `GET /v1/models`); `param` is `model`."""


class AudioNotFound(NotFound, title="No audio for this job"):
    """The job finished without a spoken reply (text reply, or it failed)."""


class AudioExpired(VoiceChatError, title="Audio expired"):
    """Retention deleted the job's audio (AUDIO_TTL_SECONDS); the job and its text are kept."""


class JobNotFinished(VoiceChatError, title="Job not finished"):
    """The job is still queued or running."""


class JobFinished(VoiceChatError, title="Job already finished"):
    """The job already succeeded or failed: there is nothing left to cancel."""


class JobCanceled(VoiceChatError, code="canceled", title="Job canceled"):
    """The job was canceled (`DELETE /v1/jobs/{job_id}`) before it finished, while a route
    waited for it."""


class InvalidHeader(BadRequest, title="Invalid request header"):
    """A request header is malformed: `Prefer: wait` is not a whole number of seconds, or
    `Last-Event-ID` (or `after`) is not an event id."""


class Unauthorized(VoiceChatError, title="Unauthorized"):
    """The request carries no usable API key while the service requires one."""


class MissingApiKey(Unauthorized, title="API key required"):
    """API keys exist and the request sent none (`Authorization: Bearer <key>`), or the
    service runs open but the request is not from this machine."""


class InvalidApiKey(Unauthorized, title="Invalid API key"):
    """The key sent is unknown or revoked (the answer does not say which); on the OpenAI
    routes, a missing key too."""


class InvalidMetricsToken(Unauthorized, title="Metrics token required"):
    """METRICS_TOKEN is set and the request did not send it as `Authorization: Bearer
    <token>`."""


class Forbidden(VoiceChatError, title="Forbidden"):
    """The request is refused."""


class MetricsNotAllowed(Forbidden, title="Metrics not allowed"):
    """METRICS_TOKEN is unset, so the metrics are served only to requests from this machine
    that no proxy forwarded."""


class OriginNotAllowed(Forbidden, title="Origin not allowed"):
    """A browser request from a page of another origin than this service's or CORS_ORIGINS
    (`Origin`, or `Sec-Fetch-Site: cross-site` on a POST)."""


class HostNotAllowed(VoiceChatError, title="Host not allowed"):
    """The request's Host is not one of ALLOWED_HOSTS (a DNS-rebinding defence)."""


class InsufficientStorage(VoiceChatError, title="Insufficient storage"):
    """The disk holding the service's files is full (or the file is over a size or quota
    limit); nothing half-written is kept."""


class ServiceUnavailable(VoiceChatError, title="Service unavailable"):
    """A backing service is unavailable."""


class ServerBusy(ServiceUnavailable, title="Too many held requests"):
    """The process already holds MAX_HELD_REQUESTS requests open (event streams, requests
    waiting for their job); try again after `Retry-After` seconds."""

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class BrokerUnavailable(ServiceUnavailable, title="Broker unavailable"):
    """The job queue is unreachable; the job was recorded as failed, so submit again."""


class DatabaseUnavailable(ServiceUnavailable, title="Database unavailable"):
    """The database is unreachable; try again shortly."""


class QueueFull(ServerBusy, title="The job queue is full"):
    """MAX_QUEUE_DEPTH jobs wait in the queue already: nothing was stored; try again after
    `Retry-After` seconds."""


class WaitTooLong(ServerBusy, title="The queue ahead is too long to wait for"):
    """The jobs queued ahead would take longer than OPENAI_WAIT_SECONDS ({openai_wait_seconds}
    s here), by the recent jobs' median run time and the ready workers: no job was made; try
    again after `Retry-After` seconds."""


class WaitTimedOut(ServerBusy, code="wait_timeout", title="The job did not finish in time"):
    """The job did not finish (a stream: did not start) within OPENAI_WAIT_SECONDS
    ({openai_wait_seconds} s here): it is canceled, so a retry never runs it twice; try again
    after `Retry-After` seconds."""


class TooManyRequests(VoiceChatError, title="Too many requests"):
    """The caller asked for more than its share; `retry_after` says when to come back."""

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class RateLimited(TooManyRequests, title="Rate limit exceeded"):
    """The caller's requests per minute (RATE_LIMIT_PER_MINUTE, or its key's own) are used
    up; try again after `Retry-After` seconds."""


class TooManyUnfinishedJobs(TooManyRequests, title="Too many unfinished jobs"):
    """The caller has MAX_UNFINISHED_JOBS (or its key's own number) jobs queued or running;
    try again after `Retry-After` seconds."""


class InvalidIdempotencyKey(InvalidHeader, title="Invalid Idempotency-Key"):
    """`Idempotency-Key` is repeated, or not 1 to 255 printable ASCII characters."""


class IdempotencyKeyReused(InvalidInput, title="Idempotency-Key used with another request"):
    """This `Idempotency-Key` came with another request
    (draft-ietf-httpapi-idempotency-key-header); use a new key."""


class IdempotencyKeyInFlight(
    VoiceChatError, title="A request with this Idempotency-Key is in flight"
):
    """The first request with this `Idempotency-Key` is still being handled; retry shortly."""


class PipelineError(VoiceChatError, title="Pipeline error"):
    """The job's pipeline failed in the worker (recorded on its row); a route that waited
    for it reports it."""


class NoSpeech(PipelineError, title="No speech in the audio"):
    """The recording holds no speech."""


class ContextLengthExceeded(PipelineError, title="Prompt too long for the model"):
    """The system prompt and the prompt alone leave no room for the reply in the model's
    context window (reported by a route that waited for the job)."""


class EmptyReply(PipelineError, title="The model produced no reply"):
    """The model produced no reply."""


class EngineUnavailable(PipelineError, title="Engine unavailable"):
    """An engine or its model cannot be loaded; the message names the setting."""


class JobTimedOut(PipelineError, code="timeout", title="Job took too long"):
    """The job ran past TASK_SOFT_TIME_LIMIT or TASK_TIME_LIMIT."""


class WorkerLost(PipelineError, title="Worker lost"):
    """The job's worker was lost on every one of MAX_ATTEMPTS attempts (or, to a streaming
    client that had some of the reply, once: the job runs again)."""


def error_for_code(code: str, detail: str) -> VoiceChatError:
    """Rebuilds the domain error a job failed with from its stored code (for waiting routes)."""
    error = _BY_CODE.get(code, VoiceChatError)(detail)
    error.code = code
    return error
