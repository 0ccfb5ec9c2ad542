"""The domain's exception hierarchy, each error with a stable machine `code`: mapped to HTTP in
`api/errors.py`, recorded on a failed job's row by the worker.

A class's docstring is what its code means in the OpenAPI document (`{setting}`: its value).
"""

from __future__ import annotations

from typing import Any


class VoiceChatError(Exception):
    """An unexpected failure, logged under the request id (or by the worker, on the job); the
    base of every error the service reports."""

    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(VoiceChatError):
    """The request cannot be parsed at all."""

    code = "bad_request"
    title = "Bad request"


class MalformedJson(BadRequest):
    """The body is not valid JSON or not a JSON object."""

    code = "malformed_json"
    title = "Malformed JSON"


class MalformedMultipart(BadRequest):
    """The multipart body cannot be parsed."""

    code = "malformed_multipart"
    title = "Malformed multipart body"


class ConflictingInput(BadRequest):
    """Both `text` and `audio` were sent."""

    code = "conflicting_input"
    title = "Both text and audio given"


class MissingInput(BadRequest):
    """Neither `text` nor `audio` was sent (for a transcription: no single `file` part)."""

    code = "missing_input"
    title = "Neither text nor audio given"


class PayloadTooLarge(VoiceChatError):
    """The body is over MAX_UPLOAD_MB ({max_upload_bytes} bytes here)."""

    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(VoiceChatError):
    """The Content-Type is not one of the accepted forms."""

    code = "unsupported_media_type"
    title = "Unsupported media type"


class UnsupportedAudioFormat(UnsupportedMediaType):
    """The uploaded bytes are none of the accepted formats (WAV, WebM or Matroska, Ogg, MP3,
    MP4/M4A, FLAC), whatever the label or file name said, or their container cannot be read."""

    code = "unsupported_audio_format"
    title = "Unsupported audio format"


class NoAudioStream(UnsupportedAudioFormat):
    """The container holds no audio stream (a video without sound, say)."""

    code = "no_audio_stream"
    title = "No audio stream"


class UnsupportedAudioCodec(UnsupportedAudioFormat):
    """The recording's codec is none of Opus, Vorbis, MP3, AAC, FLAC or ALAC."""

    code = "unsupported_audio_codec"
    title = "Unsupported audio codec"


class InvalidInput(VoiceChatError):
    """The request parses but a value in it is unacceptable."""

    code = "invalid_input"
    title = "Invalid input"


class EmptyText(InvalidInput):
    """The text is blank."""

    code = "empty_text"
    title = "Empty text"


class TextTooLong(InvalidInput):
    """The text is over MAX_TEXT_CHARS ({max_text_chars} here) characters."""

    code = "text_too_long"
    title = "Text too long"


class MessagesTooLong(InvalidInput):
    """A chat's messages hold over MAX_CHAT_CHARS ({max_chat_chars} here) characters in all."""

    code = "messages_too_long"
    title = "Chat messages too long"


class InvalidOption(InvalidInput):
    """A field, option or query parameter is unknown, repeated, of the wrong type or out of
    range; `field` (`param` on the OpenAI routes) names it."""

    code = "invalid_option"
    title = "Invalid option"


class InvalidCursor(InvalidInput):
    """The cursor was not made by this service."""

    code = "invalid_cursor"
    title = "Invalid cursor"


class InvalidAudio(InvalidInput):
    """The WAV is corrupt, or a recording cannot be decoded (found by the worker: the job
    fails with this code)."""

    code = "invalid_audio"
    title = "Invalid audio"


class TruncatedAudio(InvalidAudio):
    """The recording stops short of what its container declares: a WAV's data chunk, a WebM
    element, an Ogg page, an MP4 box or an ID3 tag runs past the end, or the packets cover
    less than the duration a FLAC, MP3 (Xing/Info), WebM or MP4 header states."""

    code = "audio_truncated"
    title = "Truncated audio"


class EmptyAudio(InvalidAudio):
    """The recording has no bytes, or no samples (no audio packets)."""

    code = "empty_audio"
    title = "Empty audio"


class AudioTooLong(InvalidAudio):
    """The recording is over MAX_AUDIO_SECONDS ({max_audio_seconds} here)."""

    code = "audio_too_long"
    title = "Audio too long"


class UnsupportedAudioEncoding(InvalidAudio):
    """The WAV's sample encoding cannot be decoded."""

    code = "unsupported_audio_encoding"
    title = "Unsupported audio encoding"


class UnsupportedChannelCount(InvalidAudio):
    """The recording has more than MAX_AUDIO_CHANNELS channels."""

    code = "unsupported_audio_channels"
    title = "Too many audio channels"


class UnsupportedSampleRate(InvalidAudio):
    """The recording's sample rate is outside MIN_AUDIO_SAMPLE_RATE to MAX_AUDIO_SAMPLE_RATE."""

    code = "unsupported_sample_rate"
    title = "Unsupported sample rate"


class TooManyChunks(InvalidAudio):
    """The WAV holds more chunks (over 64) before its samples than any real recording does."""

    code = "audio_too_many_chunks"
    title = "Too many WAV chunks"


class InvalidWebhookUrl(InvalidInput):
    """`webhook` is not an http(s) URL with a host and without credentials, of at most 2048
    characters, or its host does not resolve."""

    code = "invalid_webhook_url"
    title = "Invalid webhook URL"


class WebhookTargetNotAllowed(InvalidInput):
    """The webhook's host resolves to a link-local or other special address, or to a private or
    loopback one outside WEBHOOK_ALLOWED_NETWORKS."""

    code = "webhook_target_not_allowed"
    title = "Webhook target not allowed"


class WebhookSecretMissing(InvalidInput):
    """A webhook was asked for while the service runs open and WEBHOOK_SECRET is unset: nothing
    could sign its deliveries."""

    code = "webhook_secret_missing"
    title = "No webhook secret"


class NotFound(VoiceChatError):
    """No route matches the path."""

    code = "not_found"
    title = "Not found"


class JobNotFound(NotFound):
    """No job has this id (or it is another API key's)."""

    code = "job_not_found"
    title = "Job not found"


class ConversationNotFound(NotFound):
    """No conversation has this id (or it is another API key's)."""

    code = "conversation_not_found"
    title = "Conversation not found"


class ModelNotFound(NotFound):
    """`model` names no model of this route (see `GET /v1/models`); `param` is `model`."""

    code = "model_not_found"
    title = "Model not found"


class AudioNotFound(NotFound):
    """The job finished without a spoken reply (text reply, or it failed)."""

    code = "audio_not_found"
    title = "No audio for this job"


class AudioExpired(VoiceChatError):
    """Retention deleted the job's audio (AUDIO_TTL_SECONDS); the job and its text are kept."""

    code = "audio_expired"
    title = "Audio expired"


class JobNotFinished(VoiceChatError):
    """The job is still queued or running."""

    code = "job_not_finished"
    title = "Job not finished"


class JobFinished(VoiceChatError):
    """The job already succeeded or failed: there is nothing left to cancel."""

    code = "job_finished"
    title = "Job already finished"


class JobCanceled(VoiceChatError):
    """The job was canceled (`DELETE /v1/jobs/{job_id}`) before it finished, while a route
    waited for it."""

    code = "canceled"
    title = "Job canceled"


class InvalidHeader(BadRequest):
    """A request header is malformed: `Prefer: wait` is not a whole number of seconds, or
    `Last-Event-ID` (or `after`) is not an event id."""

    code = "invalid_header"
    title = "Invalid request header"


class Unauthorized(VoiceChatError):
    """The request carries no usable API key while the service requires one."""

    code = "unauthorized"
    title = "Unauthorized"


class MissingApiKey(Unauthorized):
    """API keys exist and the request sent none (`Authorization: Bearer <key>`), or the
    service runs open but the request is not from this machine."""

    code = "missing_api_key"
    title = "API key required"


class InvalidApiKey(Unauthorized):
    """The key sent is unknown or revoked (the answer does not say which); on the OpenAI
    routes, a missing key too."""

    code = "invalid_api_key"
    title = "Invalid API key"


class InvalidMetricsToken(Unauthorized):
    """METRICS_TOKEN is set and the request did not send it as `Authorization: Bearer
    <token>`."""

    code = "invalid_metrics_token"
    title = "Metrics token required"


class Forbidden(VoiceChatError):
    """The request is refused."""

    code = "forbidden"
    title = "Forbidden"


class MetricsNotAllowed(Forbidden):
    """METRICS_TOKEN is unset, so the metrics are served only to requests from this machine
    that no proxy forwarded."""

    code = "metrics_not_allowed"
    title = "Metrics not allowed"


class OriginNotAllowed(Forbidden):
    """A browser request from a page of another origin than this service's or CORS_ORIGINS
    (`Origin`, or `Sec-Fetch-Site: cross-site` on a POST)."""

    code = "origin_not_allowed"
    title = "Origin not allowed"


class HostNotAllowed(VoiceChatError):
    """The request's Host is not one of ALLOWED_HOSTS (a DNS-rebinding defence)."""

    code = "host_not_allowed"
    title = "Host not allowed"


class InsufficientStorage(VoiceChatError):
    """The disk holding the service's files is full (or the file is over a size or quota
    limit); nothing half-written is kept."""

    code = "insufficient_storage"
    title = "Insufficient storage"


class ServiceUnavailable(VoiceChatError):
    """A backing service is unavailable."""

    code = "service_unavailable"
    title = "Service unavailable"


class ServerBusy(ServiceUnavailable):
    """The process already holds MAX_HELD_REQUESTS requests open (event streams, requests
    waiting for their job); try again after `Retry-After` seconds."""

    code = "server_busy"
    title = "Too many held requests"

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class BrokerUnavailable(ServiceUnavailable):
    """The job queue is unreachable; the job was recorded as failed, so submit again."""

    code = "broker_unavailable"
    title = "Broker unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database is unreachable; try again shortly."""

    code = "database_unavailable"
    title = "Database unavailable"


class QueueFull(ServerBusy):
    """MAX_QUEUE_DEPTH jobs wait in the queue already: nothing was stored; try again after
    `Retry-After` seconds."""

    code = "queue_full"
    title = "The job queue is full"


class WaitTooLong(ServerBusy):
    """The jobs queued ahead would take longer than OPENAI_WAIT_SECONDS ({openai_wait_seconds}
    s here), by the recent jobs' median run time and the ready workers: no job was made; try
    again after `Retry-After` seconds."""

    code = "wait_too_long"
    title = "The queue ahead is too long to wait for"


class WaitTimedOut(ServerBusy):
    """The job did not finish (a stream: did not start) within OPENAI_WAIT_SECONDS
    ({openai_wait_seconds} s here): it is canceled, so a retry never runs it twice; try again
    after `Retry-After` seconds."""

    code = "wait_timeout"
    title = "The job did not finish in time"


class TooManyRequests(VoiceChatError):
    """The caller asked for more than its share; `retry_after` says when to come back."""

    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class RateLimited(TooManyRequests):
    """The caller's requests per minute (RATE_LIMIT_PER_MINUTE, or its key's own) are used
    up; try again after `Retry-After` seconds."""

    code = "rate_limited"
    title = "Rate limit exceeded"


class TooManyUnfinishedJobs(TooManyRequests):
    """The caller has MAX_UNFINISHED_JOBS (or its key's own number) jobs queued or running;
    try again after `Retry-After` seconds."""

    code = "too_many_unfinished_jobs"
    title = "Too many unfinished jobs"


class InvalidIdempotencyKey(InvalidHeader):
    """`Idempotency-Key` is repeated, or not 1 to 255 printable ASCII characters."""

    code = "invalid_idempotency_key"
    title = "Invalid Idempotency-Key"


class IdempotencyKeyReused(InvalidInput):
    """This `Idempotency-Key` came with another request
    (draft-ietf-httpapi-idempotency-key-header); use a new key."""

    code = "idempotency_key_reused"
    title = "Idempotency-Key used with another request"


class IdempotencyKeyInFlight(VoiceChatError):
    """The first request with this `Idempotency-Key` is still being handled; retry shortly."""

    code = "idempotency_key_in_flight"
    title = "A request with this Idempotency-Key is in flight"


class PipelineError(VoiceChatError):
    """The job's pipeline failed in the worker (recorded on its row); a route that waited
    for it reports it."""

    code = "pipeline_error"
    title = "Pipeline error"


class NoSpeech(PipelineError):
    """The recording holds no speech."""

    code = "no_speech"
    title = "No speech in the audio"


class ContextLengthExceeded(PipelineError):
    """The system prompt and the prompt alone leave no room for the reply in the model's
    context window (reported by a route that waited for the job)."""

    code = "context_length_exceeded"
    title = "Prompt too long for the model"


class EmptyReply(PipelineError):
    """The model produced no reply."""

    code = "empty_reply"
    title = "The model produced no reply"


class EngineUnavailable(PipelineError):
    """An engine or its model cannot be loaded; the message names the setting."""

    code = "engine_unavailable"
    title = "Engine unavailable"


class JobTimedOut(PipelineError):
    """The job ran past TASK_SOFT_TIME_LIMIT or TASK_TIME_LIMIT."""

    code = "timeout"
    title = "Job took too long"


class WorkerLost(PipelineError):
    """The job's worker was lost on every one of MAX_ATTEMPTS attempts (or, to a streaming
    client that had some of the reply, once: the job runs again)."""

    code = "worker_lost"
    title = "Worker lost"


def error_for_code(code: str, detail: str) -> VoiceChatError:
    """Rebuilds the domain error a job failed with from its stored code (for waiting routes)."""
    pending: list[type[VoiceChatError]] = [VoiceChatError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(detail)
        pending.extend(cls.__subclasses__())
    error = VoiceChatError(detail)
    error.code = code
    return error
