"""The domain's exception hierarchy; each error carries a stable machine `code`.

The API maps these to HTTP in one place (`api/errors.py`); the worker records `code` and the
message on the failed job's row.
"""

from __future__ import annotations

from typing import Any


class VoiceChatError(Exception):
    """Base of every error the service reports to a client."""

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
    code = "malformed_json"
    title = "Malformed JSON"


class MalformedMultipart(BadRequest):
    code = "malformed_multipart"
    title = "Malformed multipart body"


class ConflictingInput(BadRequest):
    code = "conflicting_input"
    title = "Both text and audio given"


class MissingInput(BadRequest):
    code = "missing_input"
    title = "Neither text nor audio given"


class PayloadTooLarge(VoiceChatError):
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(VoiceChatError):
    code = "unsupported_media_type"
    title = "Unsupported media type"


class NotWav(UnsupportedMediaType):
    """The uploaded bytes are not a WAV file, whatever the label said."""

    code = "unsupported_audio_format"
    title = "Audio is not a WAV file"


class InvalidInput(VoiceChatError):
    """The request parses but a value in it is unacceptable."""

    code = "invalid_input"
    title = "Invalid input"


class EmptyText(InvalidInput):
    code = "empty_text"
    title = "Empty text"


class TextTooLong(InvalidInput):
    code = "text_too_long"
    title = "Text too long"


class MessagesTooLong(InvalidInput):
    code = "messages_too_long"
    title = "Chat messages too long"


class InvalidOption(InvalidInput):
    code = "invalid_option"
    title = "Invalid option"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    title = "Invalid cursor"


class InvalidAudio(InvalidInput):
    """The WAV is corrupt or cannot be decoded."""

    code = "invalid_audio"
    title = "Invalid audio"


class TruncatedAudio(InvalidAudio):
    code = "audio_truncated"
    title = "Truncated audio"


class EmptyAudio(InvalidAudio):
    code = "empty_audio"
    title = "Empty audio"


class AudioTooLong(InvalidAudio):
    code = "audio_too_long"
    title = "Audio too long"


class UnsupportedAudioEncoding(InvalidAudio):
    code = "unsupported_audio_encoding"
    title = "Unsupported audio encoding"


class UnsupportedChannelCount(InvalidAudio):
    code = "unsupported_audio_channels"
    title = "Too many audio channels"


class UnsupportedSampleRate(InvalidAudio):
    code = "unsupported_sample_rate"
    title = "Unsupported sample rate"


class TooManyChunks(InvalidAudio):
    """The WAV holds more chunks before its samples than any real recording does."""

    code = "audio_too_many_chunks"
    title = "Too many WAV chunks"


class InvalidWebhookUrl(InvalidInput):
    """The webhook is not an absolute http(s) URL with a host, free of credentials."""

    code = "invalid_webhook_url"
    title = "Invalid webhook URL"


class WebhookTargetNotAllowed(InvalidInput):
    """The webhook's host resolves to a private, loopback, link-local or other special address
    (allowed only with WEBHOOK_ALLOW_PRIVATE)."""

    code = "webhook_target_not_allowed"
    title = "Webhook target not allowed"


class WebhookSecretMissing(InvalidInput):
    """A webhook was asked for while the service runs open and WEBHOOK_SECRET is unset: nothing
    could sign its deliveries."""

    code = "webhook_secret_missing"
    title = "No webhook secret"


class NotFound(VoiceChatError):
    code = "not_found"
    title = "Not found"


class JobNotFound(NotFound):
    code = "job_not_found"
    title = "Job not found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"
    title = "Conversation not found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    title = "Model not found"


class AudioNotFound(NotFound):
    code = "audio_not_found"
    title = "No audio for this job"


class AudioExpired(VoiceChatError):
    """Retention deleted the job's audio (AUDIO_TTL_SECONDS); the job and its text are kept."""

    code = "audio_expired"
    title = "Audio expired"


class JobNotFinished(VoiceChatError):
    code = "job_not_finished"
    title = "Job not finished"


class JobFinished(VoiceChatError):
    """The job already succeeded or failed: there is nothing left to cancel."""

    code = "job_finished"
    title = "Job already finished"


class JobCanceled(VoiceChatError):
    """The job was canceled before it finished (reported by a route that waited for it)."""

    code = "canceled"
    title = "Job canceled"


class InvalidHeader(BadRequest):
    code = "invalid_header"
    title = "Invalid request header"


class Unauthorized(VoiceChatError):
    """The request carries no usable API key while the service requires one."""

    code = "unauthorized"
    title = "Unauthorized"


class MissingApiKey(Unauthorized):
    code = "missing_api_key"
    title = "API key required"


class InvalidApiKey(Unauthorized):
    """The key sent is unknown or revoked (the answer does not say which)."""

    code = "invalid_api_key"
    title = "Invalid API key"


class Forbidden(VoiceChatError):
    code = "forbidden"
    title = "Forbidden"


class OriginNotAllowed(Forbidden):
    """A browser request from a web page of another origin than CORS_ORIGINS allows."""

    code = "origin_not_allowed"
    title = "Origin not allowed"


class HostNotAllowed(VoiceChatError):
    """The request's Host is not one of ALLOWED_HOSTS (a DNS-rebinding defence)."""

    code = "host_not_allowed"
    title = "Host not allowed"


class WaitTimedOut(VoiceChatError):
    """The job did not finish within the time the request may be held open; it goes on."""

    code = "wait_timeout"
    title = "The job did not finish in time"


class InsufficientStorage(VoiceChatError):
    """The disk holding the service's files is full (or the file is over a size or quota
    limit); nothing half-written is left behind."""

    code = "insufficient_storage"
    title = "Insufficient storage"


class ServiceUnavailable(VoiceChatError):
    code = "service_unavailable"
    title = "Service unavailable"


class ServerBusy(ServiceUnavailable):
    """Every place for a held request (an event stream, a wait) is taken; retry shortly."""

    code = "server_busy"
    title = "Too many held requests"

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class BrokerUnavailable(ServiceUnavailable):
    code = "broker_unavailable"
    title = "Broker unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "Database unavailable"


class QueueFull(ServerBusy):
    """MAX_QUEUE_DEPTH jobs wait in the queue already: a new one is refused, not queued."""

    code = "queue_full"
    title = "The job queue is full"


class TooManyRequests(VoiceChatError):
    """The caller asked for more than its share; `retry_after` says when to come back."""

    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class RateLimited(TooManyRequests):
    """The caller's requests per minute are used up."""

    code = "rate_limited"
    title = "Rate limit exceeded"


class TooManyUnfinishedJobs(TooManyRequests):
    """The caller has MAX_UNFINISHED_JOBS (or its key's own number) queued or running."""

    code = "too_many_unfinished_jobs"
    title = "Too many unfinished jobs"


class InvalidIdempotencyKey(InvalidHeader):
    code = "invalid_idempotency_key"
    title = "Invalid Idempotency-Key"


class IdempotencyKeyReused(InvalidInput):
    """The key was first sent with another request (draft-ietf-httpapi-idempotency-key-header)."""

    code = "idempotency_key_reused"
    title = "Idempotency-Key used with another request"


class IdempotencyKeyInFlight(VoiceChatError):
    """The first request with this key has not finished yet."""

    code = "idempotency_key_in_flight"
    title = "A request with this Idempotency-Key is in flight"


class PipelineError(VoiceChatError):
    """A job failed in the worker; recorded on the job's row, never raised over HTTP."""

    code = "pipeline_error"
    title = "Pipeline error"


class NoSpeech(PipelineError):
    code = "no_speech"
    title = "No speech in the audio"


class ContextLengthExceeded(PipelineError):
    code = "context_length_exceeded"
    title = "Prompt too long for the model"


class EmptyReply(PipelineError):
    code = "empty_reply"
    title = "The model produced no reply"


class EngineUnavailable(PipelineError):
    """An engine or its model cannot be loaded; the message names the setting."""

    code = "engine_unavailable"
    title = "Engine unavailable"


class JobTimedOut(PipelineError):
    code = "timeout"
    title = "Job took too long"


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
