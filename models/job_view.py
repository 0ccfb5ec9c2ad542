"""A job's public shape: the API's answer to `GET /v1/jobs/{job_id}` and the webhooks' body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.tables import InputKind, Job, JobStatus, Operation, ReplyFormat, Stage
from models.webhooks import DEFAULT_EVENTS

RESOURCE_ID = "^[0-9a-f]{32}$"


class Answer(BaseModel):
    """A response shape: every field always present (null where unknown), in declared order."""

    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True, use_attribute_docstrings=True
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def iso_time(value: datetime) -> str:
    """A time as the answers write it: ISO 8601 in UTC, with `Z`."""
    return _iso(value) or ""


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


Seconds = Annotated[float | None, Field(ge=0, description="Seconds, or null until known.")]
Stamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
OptionalStamp = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
Path = Annotated[str, Field(json_schema_extra={"format": "uri-reference"})]


class Usage(Answer):
    """Tokens the language model read (prompt, system prompt and history) and wrote."""

    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]
    total_tokens: Annotated[int, Field(ge=0, description="The sum.")]

    @classmethod
    def of(cls, job: Job) -> Usage:
        """The job's token counts (zero where the model reported none)."""
        prompt, completion = job.prompt_tokens or 0, job.completion_tokens or 0
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class TextInput(Answer):
    """A text prompt, as stored (trimmed)."""

    kind: Literal["text"]
    text: str


class AudioInput(Answer):
    """A recorded prompt."""

    kind: Literal["audio"]
    audio_seconds: Annotated[float, Field(ge=0, description="Recording length.")]


class JobResult(Answer):
    """The outcome; present once the job succeeded, and on a canceled job what it had made
    before it stopped (the reply text so far; never audio)."""

    transcript: Annotated[str | None, Field(description="What was heard; null for a text prompt.")]
    text: Annotated[str, Field(description="The reply; empty for `transcribe` and `speak` jobs.")]
    audio_url: Annotated[
        Path | None,
        Field(description="Path of the spoken reply, `/v1/jobs/{job_id}/audio`; null without one."),
    ]
    audio_seconds: Annotated[float | None, Field(ge=0, description="Length of the spoken reply.")]
    language: Annotated[
        str | None, Field(description="Language the recogniser heard; null for a text prompt.")
    ]
    finish_reason: Annotated[
        str | None,
        Field(
            description="Why the model stopped: `stop`, or `length` (at `max_tokens`; a reply to "
            "`/v1/jobs` is then cut back to its last whole sentence); null without a reply."
        ),
    ]
    usage: Annotated[
        Usage | None, Field(description="Tokens the model read and wrote; null without a reply.")
    ]
    audio_expired: Annotated[
        bool,
        Field(
            description="The spoken reply was deleted by retention (AUDIO_TTL_SECONDS after the "
            "job finished): `audio_url` is then null and the audio answers 410 `audio_expired`."
        ),
    ] = False


class JobError(Answer):
    """Why the job failed (or `canceled`); present only on a failed or canceled job."""

    code: Annotated[str, Field(description="Stable machine code (see the error codes).")]
    message: Annotated[str, Field(description="For a person.")]


class Timings(Answer):
    """How long each part took; `queued_s` from creation to start, `total_s` to the finish."""

    queued_s: Seconds
    transcribe_s: Seconds
    generate_s: Seconds
    synthesize_s: Seconds
    total_s: Seconds


class WebhookAttempt(Answer):
    """One attempt to deliver a webhook event, oldest first."""

    event: Literal["started", "completed"]
    attempt: Annotated[int, Field(ge=1, description="1 for the first try of this event.")]
    status_code: Annotated[int | None, Field(description="The receiver's answer; null if none.")]
    error: Annotated[
        str | None,
        Field(
            description="Why it failed: `http_status` (not 2xx; redirects are not followed), "
            "`timeout`, `connection_failed`, `tls_failed`, `unresolvable`, "
            "`target_not_allowed`, `no_secret` or `internal_error` (the last three are not "
            "retried); null once delivered."
        ),
    ]
    delivered: Annotated[bool, Field(description="A 2xx answer.")]
    at: Stamp


class WebhookView(Answer):
    """The job's webhook and its delivery attempts so far."""

    url: str
    events: list[Literal["started", "completed"]]
    deliveries: list[WebhookAttempt]

    @classmethod
    def of(cls, job: Job) -> WebhookView | None:
        """The job's webhook, or None when it has none."""
        if not job.webhook_url:
            return None
        return cls(
            url=job.webhook_url,
            events=list(job.webhook_events or DEFAULT_EVENTS),  # type: ignore[arg-type]
            deliveries=[
                WebhookAttempt(
                    event=d.event,  # type: ignore[arg-type]
                    attempt=d.attempt,
                    status_code=d.status_code,
                    error=d.error,
                    delivered=d.delivered,
                    at=iso_time(d.created_at),
                )
                for d in job.webhook_deliveries
            ],
        )


class JobView(Answer):
    """A submitted prompt and what the pipeline made of it. Times are UTC (`Z`)."""

    id: Annotated[str, Field(pattern=RESOURCE_ID)]
    operation: Operation
    conversation_id: Annotated[str | None, Field(pattern=RESOURCE_ID)]
    status: JobStatus
    stage: Annotated[Stage | None, Field(description="The pipeline stage the job is in, or null.")]
    reply: ReplyFormat
    input: Annotated[TextInput | AudioInput, Field(discriminator="kind")]
    result: JobResult | None
    error: JobError | None
    timings: Timings
    attempts: Annotated[int, Field(ge=0, description="Runs started so far.")]
    events_url: Annotated[Path, Field(description="Path of the job's event stream.")]
    created_at: Stamp
    started_at: OptionalStamp
    finished_at: OptionalStamp
    webhook: Annotated[
        WebhookView | None, Field(description="The job's webhook and its deliveries, or null.")
    ] = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The public form of a job row."""
        return cls(
            id=job.id,
            operation=Operation(job.operation),
            conversation_id=job.conversation_id,
            status=job.job_status,
            stage=Stage(job.stage) if job.stage else None,
            reply=ReplyFormat(job.reply_format),
            input=(
                TextInput(kind="text", text=job.input_text or "")
                if job.input_kind == InputKind.TEXT.value
                else AudioInput(kind="audio", audio_seconds=job.input_audio_seconds or 0.0)
            ),
            result=_result(job) if _has_result(job) else None,
            error=JobError(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            timings=Timings(
                queued_s=_seconds(job.created_at, job.started_at),
                transcribe_s=job.transcribe_s,
                generate_s=job.generate_s,
                synthesize_s=job.synthesize_s,
                total_s=_seconds(job.created_at, job.finished_at),
            ),
            attempts=job.attempts,
            events_url=f"/v1/jobs/{job.id}/events",
            created_at=_iso(job.created_at) or "",
            started_at=_iso(job.started_at),
            finished_at=_iso(job.finished_at),
            webhook=WebhookView.of(job),
        )


def _has_result(job: Job) -> bool:
    if job.job_status is JobStatus.CANCELED:  # what it made before it stopped, if anything
        return job.reply_text is not None or job.transcript is not None
    return job.job_status is JobStatus.SUCCEEDED


def _result(job: Job) -> JobResult:
    expired = job.reply_audio_file is not None and job.expired_at is not None
    has_audio = job.reply_audio_file is not None and not expired
    return JobResult(
        transcript=job.transcript,
        text=job.reply_text or "",
        audio_url=f"/v1/jobs/{job.id}/audio" if has_audio else None,
        audio_seconds=job.reply_audio_seconds,
        language=job.transcript_language,
        finish_reason=job.finish_reason,
        usage=Usage.of(job) if job.prompt_tokens is not None else None,
        audio_expired=expired,
    )


class WebhookEvent(Answer):
    """The body of a webhook delivery: what happened to a job, and the job as it is now."""

    type: Annotated[
        Literal["job.started", "job.completed"],
        Field(description="`job.completed`: the job ended, whatever its status."),
    ]
    timestamp: Annotated[
        Stamp, Field(description="When it happened (`started_at`, `finished_at`).")
    ]
    data: Annotated[JobView, Field(description="The job as `GET /v1/jobs/{job_id}` shows it.")]
