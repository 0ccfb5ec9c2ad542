"""The request and response shapes of the job and conversation routes, each declared once.

Validation (`api/request_validation.py`), the OpenAPI components (`api/openapi/`) and the JSON
answers all come from these models. Bounds named by `Live` are the running settings' values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic.config import JsonDict

from api.request_validation import Live, PositiveWhole, Shape, integral, refuse
from models import queries
from models.errors import (
    ConflictingInput,
    EmptyText,
    InvalidCursor,
    InvalidOption,
    InvalidWebhookUrl,
    MissingInput,
    TextTooLong,
)
from models.job_view import RESOURCE_ID, Answer, JobView, Stamp, iso_time
from models.tables import Conversation, JobStatus, ReplyFormat, Turn
from models.webhooks import DEFAULT_EVENTS, EVENTS, MAX_URL_LENGTH, check_url

# The recording a route takes, for its description.
RECORDING = (
    "a WAV (PCM, float, A-law, mu-law or ADPCM samples), WebM or Matroska (Opus, Vorbis), Ogg "
    "(Opus, Vorbis, FLAC), MP3, MP4/M4A (AAC, ALAC) or FLAC file of at most MAX_AUDIO_SECONDS; "
    "the format is decided by the bytes, not the label or the file name."
)
# The characters str.strip() removes (str.isspace()), spelled out: `\\s` means other sets in
# other regex dialects (ECMA's takes U+FEFF, and leaves U+001C-U+001F and U+0085).
BLANK = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680"
    "\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
# Non-blank and free of NUL (PostgreSQL refuses NUL in text): what JSON Schema can say of a prompt.
PROMPT_PATTERN = f"^[^\\u0000]*[^\\u0000{BLANK}][^\\u0000]*$"
NO_NUL_PATTERN = "^[^\\u0000]*$"
MAX_TEMPERATURE = 2.0


def check_encodable(value: str) -> str:
    """Refuses text the database cannot store: NUL, and lone surrogates (not UTF-8)."""
    if "\x00" in value:
        raise refuse(InvalidOption, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse(InvalidOption, "must be valid Unicode text") from None
    return value


def not_blank(value: str) -> str:
    """Trims a text; refuses it with `empty_text` when nothing is left."""
    stripped = value.strip()
    if not stripped:
        raise refuse(EmptyText, "must not be blank")
    return stripped


def is_resource_id(value: str) -> bool:
    """Whether `value` has the shape of a job or conversation id (32 lowercase hex digits)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _resource_id(value: str) -> str:
    if not is_resource_id(value):
        raise refuse(InvalidOption, "must be an id this service returned")
    return value


Encodable = Annotated[
    str, AfterValidator(check_encodable), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})
]
# Trimmed; then non-blank and within MAX_TEXT_CHARS.
PromptText = Annotated[
    str,
    AfterValidator(check_encodable),
    AfterValidator(not_blank),
    Live("maxLength", "max_text_chars", TextTooLong),
    Field(
        description="The prompt. Trimmed, then it must be non-blank and at most MAX_TEXT_CHARS "
        "characters.",
        json_schema_extra={"pattern": PROMPT_PATTERN, "minLength": 1},
    ),
]
ResourceId = Annotated[
    str, AfterValidator(_resource_id), Field(json_schema_extra={"pattern": RESOURCE_ID})
]
SystemPrompt = Annotated[
    Encodable,
    Live("maxLength", "max_system_chars"),
    AfterValidator(str.strip),
    Field(description="System prompt for the language model, trimmed; at most MAX_SYSTEM_CHARS."),
]


# The reply's length in tokens, 1 to MAX_TOKENS_LIMIT; absent for the default.
ReplyTokens = Annotated[PositiveWhole | None, Live("maximum", "max_tokens_limit")]
SamplingTemperature = Annotated[
    Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)] | None,
    Field(description="Sampling temperature; DEFAULT_TEMPERATURE when absent."),
]

WEBHOOK_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$"


def _webhook_url(value: str) -> str:
    try:
        check_url(value)
    except InvalidWebhookUrl as error:
        raise refuse(InvalidWebhookUrl, error.detail.removeprefix("webhook ")) from None
    return value


def _event_list(value: Any, info: ValidationInfo) -> Any:
    """A form or query string carries the events as one comma-separated value."""
    if isinstance(value, str) and (info.context or {}).get("from_strings"):
        return [part.strip() for part in value.split(",")]
    return value


def _distinct(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise refuse(InvalidOption, "must not name an event twice")
    return value


WebhookUrl = Annotated[
    str,
    AfterValidator(_webhook_url),
    Field(
        description="Where to POST the job's events, signed per Standard Webhooks (see "
        "docs/usage.md): an https or http URL with a host, without credentials, of "
        f"at most {MAX_URL_LENGTH} characters (422 `invalid_webhook_url`). Its host must "
        "resolve to public addresses, or private ones inside WEBHOOK_ALLOWED_NETWORKS (422 "
        "`webhook_target_not_allowed`). With the service open (no API keys), WEBHOOK_SECRET "
        "must be set (422 `webhook_secret_missing`).",
        json_schema_extra={
            "format": "uri",
            "maxLength": MAX_URL_LENGTH,
            "pattern": WEBHOOK_PATTERN,
        },
    ),
]
WebhookEvents = Annotated[
    list[Literal["started", "completed"]],
    BeforeValidator(_event_list),
    AfterValidator(_distinct),
    Field(
        min_length=1,
        max_length=len(EVENTS),
        description="Which events to deliver: `started` (a worker took the job) and "
        '`completed` (it ended: succeeded, failed or canceled); `["completed"]` when absent. '
        "In a form or query string, one comma-separated value (`started,completed`).",
        json_schema_extra={"uniqueItems": True},
    ),
]


# What JSON Schema can say of `webhook_events`: it comes with a `webhook`.
_EVENTS_NEED_A_WEBHOOK: JsonDict = {
    "if": {"properties": {"webhook_events": {"type": "array"}}, "required": ["webhook_events"]},
    "then": {"properties": {"webhook": {"type": "string"}}, "required": ["webhook"]},
}


class JobOptions(Shape):
    """What a prompt may carry besides itself; an explicit null counts as absent."""

    model_config = ConfigDict(json_schema_extra=_EVENTS_NEED_A_WEBHOOK)

    reply: Annotated[ReplyFormat, Field(strict=False)] | None = None
    """How to answer; `text` when absent."""
    system: SystemPrompt | None = None
    max_tokens: Annotated[ReplyTokens, Live("default", "default_max_tokens")] = None
    """Longest reply in tokens; DEFAULT_MAX_TOKENS when absent."""
    temperature: Annotated[SamplingTemperature, Live("default", "default_temperature")] = None
    voice: Annotated[str | None, Live("enum", "tts_voices"), Live("default", "tts_voice")] = None
    """Voice of the spoken reply, one of TTS_VOICES; TTS_VOICE when absent."""
    conversation_id: ResourceId | None = None
    """Answer within this conversation (made by `POST /v1/conversations`): its system prompt
    (unless `system` is sent) and as many of its latest turns as fit the context window go with
    the prompt, and the prompt and reply join it once the job succeeds. 404
    `conversation_not_found` when there is none."""
    webhook: WebhookUrl | None = None
    webhook_events: WebhookEvents | None = None

    @model_validator(mode="after")
    def _events_need_a_webhook(self) -> JobOptions:
        if self.webhook_events is not None and self.webhook is None:
            raise refuse(InvalidOption, "webhook_events is given without a webhook.")
        return self

    def webhook_event_names(self) -> list[str] | None:
        """The events stored on the job: those asked for, the default with a webhook, or None."""
        if self.webhook is None:
            return None
        return list(self.webhook_events or DEFAULT_EVENTS)

    def generation_options(self) -> dict[str, Any]:
        """The options stored on the job row: only those given."""
        names = ("system", "max_tokens", "temperature", "voice")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class TextJobRequest(JobOptions):
    """A text prompt (JSON, or a plain HTML form). Audio cannot travel in JSON."""

    missing_errors = {"text": MissingInput}

    text: PromptText


class UploadJobRequest(JobOptions):
    """A multipart form: exactly one of the `audio` file part or the `text` field, plus options
    as fields. Each field may appear once; no other file part is accepted."""

    # A form has no null: `dependentRequired` says it (and schemathesis's coverage phase fails
    # on an `if` beside a binary part).
    model_config = ConfigDict(
        json_schema_extra={
            "dependentRequired": {"webhook_events": ["webhook"]},
            "oneOf": [{"required": ["audio"]}, {"required": ["text"]}],
        }
    )

    text: PromptText | None = None
    audio: Annotated[
        bytes | None, Field(description=f"The recording, as a file part: {RECORDING}")
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _one_prompt(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) - set(cls.model_fields):
            return data  # unknown fields are reported first
        if data.get("text") is not None and data.get("audio") is not None:
            raise refuse(ConflictingInput, "Send either text or audio, not both.")
        if data.get("text") is None and data.get("audio") is None:
            raise refuse(MissingInput, "Send a prompt: a 'text' field or an 'audio' recording.")
        return data


class ConversationRequest(Shape):
    """A new conversation's settings; the body may also be empty."""

    system: Annotated[
        SystemPrompt | None,
        Field(description="System prompt of every job in the conversation that sends none."),
    ] = None


def _cursor(value: str) -> str:
    try:
        queries.decode_cursor(value)
    except InvalidCursor as error:
        raise refuse(InvalidCursor, error.detail) from None
    return value


class JobListQuery(Shape):
    """The query of `GET /v1/jobs`."""

    status: Annotated[JobStatus, Field(strict=False)] | None = None
    """Only jobs in this status."""
    limit: Annotated[int, Field(ge=1, le=100), BeforeValidator(integral)] = 20
    """Jobs per page."""
    cursor: (
        Annotated[
            str,
            AfterValidator(_cursor),
            Field(json_schema_extra={"pattern": queries.CURSOR_PATTERN}),
        ]
        | None
    ) = None
    """The `next_cursor` of the previous page, as it was given (422 `invalid_cursor` for any
    other shape)."""


class AudioQuery(Shape):
    """The query of `GET /v1/jobs/{job_id}/audio`."""

    format: Literal["wav", "pcm"] = "wav"
    """`wav`: a 16-bit mono WAV (of unknown length while it streams); `pcm`: the same samples,
    little-endian, without a header (the rate is in `X-Sample-Rate` once the reply is stored;
    while it streams, the voice's rate, e.g. 22050 Hz)."""


# Answers


class JobList(Answer):
    """One page of jobs, newest first."""

    data: list[JobView]
    next_cursor: Annotated[str, Field(pattern=queries.CURSOR_PATTERN)] | None
    """Cursor of the next page; null on the last."""


class TurnView(Answer):
    """One message of a conversation, added when its job succeeded."""

    role: Literal["user", "assistant"]
    content: Annotated[str, Field(description="What was said; a spoken prompt as its transcript.")]
    job_id: Annotated[str | None, Field(description="The job that added the turn.")]
    created_at: Stamp


class ConversationView(Answer):
    """A server-kept chat history. Times are UTC (`Z`)."""

    id: Annotated[str, Field(pattern=RESOURCE_ID)]
    system: Annotated[str | None, Field(description="Its system prompt, or null for the default.")]
    created_at: Stamp
    turns: Annotated[list[TurnView], Field(description="Oldest first.")]

    @classmethod
    def of(cls, conversation: Conversation, turns: list[Turn]) -> ConversationView:
        """The public form of a conversation and its turns, oldest first."""
        return cls(
            id=conversation.id,
            system=conversation.system,
            created_at=iso_time(conversation.created_at),
            turns=[
                TurnView(
                    role=turn.role,  # type: ignore[arg-type]
                    content=turn.content,
                    job_id=turn.job_id,
                    created_at=iso_time(turn.created_at),
                )
                for turn in turns
            ],
        )


class Problem(Answer):
    """An RFC 9457 problem with a stable machine `code`."""

    # `field` and `job_id` come with some codes only.
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    type: Annotated[str, Field(json_schema_extra={"format": "uri"})]
    """Names the `code`."""

    title: Annotated[str, Field(description="Short; the same for every occurrence.")]
    status: Annotated[int, Field(description="The HTTP status.")]
    detail: Annotated[str, Field(description="What went wrong this time.")]
    code: Annotated[str, Field(description="Stable machine code to branch on.")]
    request_id: Annotated[str | None, Field(description="Also in the `X-Request-ID` header.")]
    field: str | None = None
    """With `invalid_option` and the like: the field or parameter at fault."""
    job_id: str | None = None
    """With `context_length_exceeded`: the job that failed."""


class Liveness(Answer):
    """The process is up."""

    status: Literal["ok"]


class Check(Answer):
    """One dependency's check."""

    ok: bool
    error: str | None = None
    """The exception's class name, when not ok."""


class WorkerCheck(Answer):
    """Workers that have published a heartbeat recently."""

    ok: Annotated[bool, Field(description="At least one worker is ready.")]
    count: Annotated[int, Field(ge=0, description="Live workers with their models loaded.")]
    details: list[dict[str, Any]]
    """What each live worker reports of itself."""


class Checks(Answer):
    """Each dependency's result."""

    database: Check
    broker: Check
    workers: WorkerCheck


class Readiness(Answer):
    """Ready only when every check is ok."""

    status: Literal["ready", "not_ready"]
    checks: Checks
