"""The OpenAI-compatible routes' request and response shapes, as OpenAI's API reference has them.

What the running settings decide (the model's id, the voices) is checked against them at
validation time and written into the document from them (`api/openapi/__init__.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_validator,
)

from api.openai.formats import DEFAULT_SPEECH_FORMAT, SPEECH_FORMATS, TRANSCRIPTION_FORMATS
from api.request_validation import (
    Live,
    Shape,
    integral,
    refuse,
    running_settings,
)
from api.schemas import (
    NO_NUL_PATTERN,
    PROMPT_PATTERN,
    RECORDING,
    Encodable,
    ReplyTokens,
    SamplingTemperature,
    check_encodable,
    not_blank,
)
from models.errors import (
    EmptyText,
    InvalidOption,
    MessagesTooLong,
    MissingInput,
    ModelNotFound,
    RateLimited,
)
from models.job_view import Answer, Usage
from models.presets import llm_model_id
from models.settings import Settings
from models.tables import Job, Message
from models.whisper_languages import WHISPER_LANGUAGES

WHISPER_MODEL_ID = "whisper-1"
TTS_MODEL_IDS = ("tts-1", "tts-1-hd")
# OpenAI's voices; each speaks with the configured default voice (TTS_VOICE) here.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
# OpenAI's roles as the pipeline's: `developer` is the newer name of `system`.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 1000
MAX_MESSAGE_CHARS = 32_000
MAX_SPEECH_CHARS = 4096
MAX_TRANSCRIPTION_PROMPT_CHARS = 2000
MIN_SPEED, MAX_SPEED = 0.25, 4.0
COMPLETION_ID = "^chatcmpl-[0-9a-f]{32}$"
# OpenAI's bounds: up to 4 stop sequences, penalties from -2 to 2. A seed is a uint32 in
# llama.cpp, whose 2**32 - 1 (LLAMA_DEFAULT_SEED) means "draw a random one".
MAX_STOPS, MAX_STOP_CHARS, MAX_SEED = 4, 200, 2**32 - 2
# Stored with the job as given (`stop` as a list), and read by the worker's `Sampling`.
_SAMPLED_AS_GIVEN = {"temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"}
StopSequence = Annotated[Encodable, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopSequences = Annotated[list[StopSequence], Field(min_length=1, max_length=MAX_STOPS)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] | None
# The `created` of every model: the models are this service's, not dated releases.
MODELS_CREATED = 1_700_000_000


def served_model_ids(settings: Settings) -> list[str]:
    """Every model id this service answers to, one per stage, as `GET /v1/models` lists them."""
    return [llm_model_id(settings), WHISPER_MODEL_ID, *TTS_MODEL_IDS]


def speech_voices(settings: Settings) -> list[str]:
    """The voices `/v1/audio/speech` accepts: OpenAI's, then the server's TTS_VOICES."""
    return [*OPENAI_VOICES, *(v for v in settings.tts_voices if v not in OPENAI_VOICES)]


def _model_among(accepted: Callable[[Settings], Sequence[str]]) -> AfterValidator:
    """Refuses a model id this route does not serve with 404 `model_not_found`."""

    def check(value: str, info: ValidationInfo) -> str:
        ids = accepted(running_settings(info))
        if not value:
            raise refuse(InvalidOption, "must name a model")
        if value not in ids:
            raise refuse(ModelNotFound, f"must be one of {', '.join(ids)} (see GET /v1/models)")
        return value

    return AfterValidator(check)


def _one_of(values: Sequence[str]) -> AfterValidator:
    """Refuses a value outside `values` (the schema's `enum`, which the message names)."""

    def check(value: str) -> str:
        if value not in values:
            raise refuse(InvalidOption)
        return value

    return AfterValidator(check)


def _as_a_whole(message: str) -> WrapValidator:
    """Reports any fault inside a value as one fault of the value, at its own path."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise refuse(InvalidOption, message) from None

    return WrapValidator(check)


def _only_one_choice(value: int) -> int:
    if value != 1:
        raise refuse(InvalidOption, "must be 1: one choice is made")
    return value


def _one_file_part(value: Any) -> Any:
    if isinstance(value, list):
        raise refuse(MissingInput, "Send exactly one 'file' part holding the recording.")
    if isinstance(value, str):
        raise refuse(InvalidOption, "must be a file part, not a text field")
    return value


# Requests


class ChatTextPart(Shape):
    """A text content part; other members (e.g. `cache_control`) are ignored."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Annotated[str, Field(json_schema_extra={"pattern": NO_NUL_PATTERN})] = ""


# Parts are joined: their text is non-blank when one part's is.
_SOME_TEXT = {"required": ["text"], "properties": {"text": {"pattern": PROMPT_PATTERN}}}
MessageContent = Annotated[
    Annotated[
        str,
        WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_MESSAGE_CHARS,
                "pattern": PROMPT_PATTERN,
            }
        ),
    ]
    | Annotated[list[ChatTextPart], Field(json_schema_extra={"contains": _SOME_TEXT})],
    _as_a_whole("must be a string or an array of text content parts (only text is understood)"),
    Field(
        description="A string, or text content parts, joined: trimmed, it must be non-blank "
        f"(422 `empty_text`); at most {MAX_MESSAGE_CHARS} characters either way."
    ),
]


class ChatMessage(Shape):
    """One message; other members (e.g. `name`) are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    """`developer` counts as `system`."""
    content: MessageContent

    @field_validator("content")
    @classmethod
    def _storable_text(cls, content: str | list[ChatTextPart]) -> str | list[ChatTextPart]:
        text = _joined(content)
        check_encodable(text)
        if not text.strip():
            raise refuse(EmptyText, "must not be blank")
        if len(text) > MAX_MESSAGE_CHARS:
            raise refuse(InvalidOption, f"must have at most {MAX_MESSAGE_CHARS} characters")
        return content

    @property
    def text(self) -> str:
        """The message's text, its parts joined."""
        return _joined(self.content)

    def as_history(self) -> Message:
        """The message in the pipeline's roles (`developer` as `system`)."""
        return {"role": CHAT_ROLES[self.role], "content": self.text}


def _joined(content: str | list[ChatTextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class StreamOptions(Shape):
    """Options of a streamed completion."""

    include_usage: bool = False
    """Add a last chunk with `usage` and no choices."""


class ChatCompletionRequest(Shape):
    """A chat completion request. No system prompt is added; an explicit null counts as absent
    (but for `stream`)."""

    # What JSON Schema can say of `stream_options`: it comes with `stream: true`.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {"stream_options": {"type": "object"}},
                "required": ["stream_options"],
            },
            "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
        }
    )

    model: Annotated[str, _model_among(lambda settings: (llm_model_id(settings),))]
    """The language model's id, as listed by `GET /v1/models`; another id is 404
    `model_not_found`."""
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    """The chat, oldest first. The last message must be the user's, and is the prompt. A blank
    content is 422 `empty_text` (`param` `messages[N].content`, N its index). Their contents hold
    at most MAX_CHAT_CHARS characters in all (422 `messages_too_long`, `param` `messages`). The
    earlier ones that fit the context window go with it, system messages always; a prompt that
    leaves no room for the reply is 422 `context_length_exceeded` (`param` `messages`)."""
    stream: bool = False
    """Answer with `text/event-stream` chunks as the reply is generated."""
    stream_options: Annotated[
        StreamOptions | None,
        _as_a_whole("must be an object with at most include_usage, a boolean"),
        Field(description="With `stream: true` only."),
    ] = None
    n: Annotated[
        Annotated[
            int,
            AfterValidator(_only_one_choice),
            BeforeValidator(integral),
            Field(json_schema_extra={"const": 1}),
        ]
        | None,
        Field(description="Only one choice is made."),
    ] = None
    max_completion_tokens: Annotated[ReplyTokens, Live("default", "default_max_tokens")] = None
    """Longest reply in tokens, 1 to MAX_TOKENS_LIMIT; wins over `max_tokens`. When both are
    absent, DEFAULT_MAX_TOKENS."""
    max_tokens: ReplyTokens = None
    """The older name of `max_completion_tokens`."""
    temperature: Annotated[SamplingTemperature, Live("default", "default_temperature")] = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    """Draw from the likeliest tokens whose probabilities add up to this; the engine's default
    (0.95 on llama.cpp) when absent."""
    stop: Annotated[
        StopSequence | StopSequences | None,
        _as_a_whole(
            f"must be a string of 1 to {MAX_STOP_CHARS} characters or an array of 1 to "
            f"{MAX_STOPS} of them"
        ),
    ] = None
    """Where the reply ends (`finish_reason: "stop"`), the sequence itself left out."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(integral)] | None = None
    """The same seed and request give the same reply on the same model and engine, as far as
    the engine is deterministic (llama.cpp's can differ with what its prompt cache held)."""
    presence_penalty: Penalty = None
    """Penalises a token that is in the text so far at all, -2 to 2; 0 when absent."""
    frequency_penalty: Penalty = None
    """Penalises a token by how often it is in the text so far, -2 to 2; 0 when absent."""
    user: Annotated[Any, Field(description="Accepted and ignored.")] = None

    @field_validator("messages")
    @classmethod
    def _ends_with_the_prompt(
        cls, messages: list[ChatMessage], info: ValidationInfo
    ) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise refuse(InvalidOption, "must end with the user's message")
        limit = running_settings(info).max_chat_chars
        if sum(len(message.text) for message in messages) > limit:
            raise refuse(
                MessagesTooLong, f"must hold at most {limit} characters in all (MAX_CHAT_CHARS)"
            )
        return messages

    @field_validator("stream_options")
    @classmethod
    def _only_when_streamed(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if options is not None and info.data.get("stream") is not True:
            raise refuse(InvalidOption, "must come with stream: true")
        return options

    @property
    def prompt(self) -> str:
        """The last message's text, trimmed: what the model answers."""
        return self.messages[-1].text.strip()

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def history(self) -> list[Message]:
        """The messages before the prompt, in the pipeline's roles."""
        return [message.as_history() for message in self.messages[:-1]]

    def generation_options(self) -> dict[str, Any]:
        """The options stored on the job: only those given, and no added system prompt."""
        limit = (
            self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
        )
        given = {
            "max_tokens": limit,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            **self.model_dump(include=_SAMPLED_AS_GIVEN),
        }
        options = {name: value for name, value in given.items() if value is not None}
        return {"system": "", "whole_sentences": False, **options}


class SpeechRequest(Shape):
    """A speech request."""

    model: Annotated[
        str,
        _model_among(lambda _: TTS_MODEL_IDS),
        Field(description="Both the same.", json_schema_extra={"enum": list(TTS_MODEL_IDS)}),
    ]
    input: Annotated[
        str,
        Field(max_length=MAX_SPEECH_CHARS),
        AfterValidator(check_encodable),
        AfterValidator(not_blank),
        Field(
            description=f"What to say: trimmed, it must be non-blank; at most {MAX_SPEECH_CHARS} "
            "characters (OpenAI's limit, not MAX_TEXT_CHARS).",
            json_schema_extra={"pattern": PROMPT_PATTERN, "minLength": 1},
        ),
    ]
    voice: str
    """One of OpenAI's voices, each spoken with TTS_VOICE, or one of the server's TTS_VOICES."""
    response_format: Annotated[
        str, _one_of(tuple(SPEECH_FORMATS)), Field(json_schema_extra={"enum": list(SPEECH_FORMATS)})
    ] = DEFAULT_SPEECH_FORMAT
    """`pcm` is 16-bit little-endian mono samples at 24 kHz without a header; `mp3` and `opus`
    only where libsndfile writes them."""
    speed: Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED, allow_inf_nan=False)] = 1.0

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, voice: str, info: ValidationInfo) -> str:
        voices = speech_voices(running_settings(info))
        if voice not in voices:
            raise refuse(InvalidOption, f"must be one of {', '.join(voices)}")
        return voice

    def speech_options(self, settings: Settings) -> dict[str, Any]:
        """The options stored on the job: the server's voice, and the speed."""
        voice = settings.tts_voice if self.voice in OPENAI_VOICES else self.voice
        return {"voice": voice, "speed": self.speed}


class TranscriptionRequest(Shape):
    """The recording as the `file` part, the rest as text fields, each at most once (but
    `timestamp_granularities[]`)."""

    missing_errors = {"file": MissingInput}

    file: Annotated[
        bytes,
        BeforeValidator(_one_file_part),
        Field(description=f"The recording: {RECORDING}"),
    ]
    model: Annotated[
        str,
        _model_among(lambda _: (WHISPER_MODEL_ID,)),
        Field(json_schema_extra={"enum": [WHISPER_MODEL_ID]}),
    ]
    response_format: Annotated[
        str,
        _one_of(TRANSCRIPTION_FORMATS),
        Field(json_schema_extra={"enum": list(TRANSCRIPTION_FORMATS)}),
    ] = "json"
    language: (
        Annotated[
            str,
            _one_of(WHISPER_LANGUAGES),
            Field(json_schema_extra={"enum": list(WHISPER_LANGUAGES)}),
        ]
        | None
    ) = None
    """The spoken language: one of Whisper's language codes (ISO-639-1 in lower case, such as
    `en`, and `haw`, `yue`); WHISPER_LANGUAGE when absent (`auto` detects it)."""
    prompt: Annotated[Encodable | None, Field(max_length=MAX_TRANSCRIPTION_PROMPT_CHARS)] = None
    """Text to guide the recogniser (spellings, the previous sentence)."""
    temperature: Annotated[
        SamplingTemperature,
        Field(description="Accepted for compatibility and unused (decoding is beam search)."),
    ] = None

    timestamp_granularities: Annotated[
        list[Literal["segment"]],
        _as_a_whole("must list only segment: segment timestamps are the only ones available"),
        Field(alias="timestamp_granularities[]"),
    ] = []
    """Only `segment`, which `verbose_json` always has."""

    def recognition_options(self) -> dict[str, Any]:
        """The options stored on the job: the language and the prompt, when given."""
        options: dict[str, Any] = {}
        if self.language is not None:
            options["language"] = self.language
        if self.prompt:
            options["prompt"] = self.prompt
        return options


# Answers


class Model(Answer):
    """A model this service answers with."""

    id: str
    object: Literal["model"]
    created: Annotated[int, Field(description="Unix time (fixed).")]
    owned_by: Literal["voicechat"]


class ModelList(Answer):
    """The models, in OpenAI's list shape."""

    object: Literal["list"]
    data: list[Model]

    @classmethod
    def of(cls, settings: Settings) -> ModelList:
        """The models served under `settings`, one per stage."""
        models = [
            Model(id=i, object="model", created=MODELS_CREATED, owned_by="voicechat")
            for i in served_model_ids(settings)
        ]
        return cls(object="list", data=models)


class AssistantMessage(Answer):
    """The reply."""

    role: Literal["assistant"]
    content: str
    refusal: None


class ChatChoice(Answer):
    """The one choice."""

    index: Literal[0]
    message: AssistantMessage
    logprobs: None
    finish_reason: str
    """`stop`, or `length` when cut at the token limit."""


class ChatCompletion(Answer):
    """A chat completion, in OpenAI's shape; `id` is `chatcmpl-` and the job id."""

    id: Annotated[str, Field(pattern=COMPLETION_ID)]
    object: Literal["chat.completion"]
    created: Annotated[int, Field(description="Unix time the job was made.")]
    model: str
    choices: Annotated[list[ChatChoice], Field(min_length=1, max_length=1)]
    usage: Usage
    system_fingerprint: None

    @classmethod
    def of(cls, job: Job, model: str) -> ChatCompletion:
        """The completion a succeeded chat job made."""
        reply = AssistantMessage(role="assistant", content=job.reply_text or "", refusal=None)
        choice = ChatChoice(
            index=0, message=reply, logprobs=None, finish_reason=job.finish_reason or "stop"
        )
        return cls(
            id=f"chatcmpl-{job.id}",
            object="chat.completion",
            created=int(job.created_at.timestamp()),
            model=model,
            choices=[choice],
            usage=Usage.of(job),
            system_fingerprint=None,
        )


class ChatDelta(Answer):
    """The next piece of the reply: the role on the first chunk, then content."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Answer):
    """The one choice."""

    index: Literal[0]
    delta: ChatDelta
    logprobs: None
    finish_reason: Annotated[str | None, Field(description="Set on the last chunk only.")]


class ChatCompletionChunk(Answer):
    """One event of a streamed chat completion (`text/event-stream`); serialized without the
    members left unset (`usage` but on the usage chunk, a delta's absent role or content)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    id: Annotated[str, Field(pattern=COMPLETION_ID)]
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: Annotated[list[ChatChunkChoice], Field(max_length=1)]
    """Empty on the usage chunk."""
    usage: Usage | None = None

    def piece(self, delta: ChatDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        """A chunk of this completion with one choice."""
        choice = ChatChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish_reason)
        return self.model_copy(update={"choices": [choice]})

    def body(self) -> dict[str, Any]:
        """The chunk as JSON-ready data, without unset members."""
        return self.model_dump(mode="json", exclude_unset=True)


class TranscriptSegment(Answer):
    """A stretch of speech."""

    id: Annotated[int, Field(ge=0)]
    start: Annotated[float, Field(description="Seconds.")]
    end: Annotated[float, Field(description="Seconds.")]
    text: str


class Transcription(Answer):
    """A transcript (`response_format` `json`)."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    text: str


class VerboseTranscription(Answer):
    """A transcript with its segments (`response_format` `verbose_json`)."""

    task: Literal["transcribe"]
    language: Annotated[str | None, Field(description="The language heard, e.g. `en`.")]
    duration: Annotated[float, Field(ge=0, description="Seconds of audio.")]
    text: str
    segments: list[TranscriptSegment]

    @classmethod
    def of(
        cls, text: str, segments: list[dict[str, Any]], language: str | None, duration: float
    ) -> VerboseTranscription:
        """A transcript from the recogniser's text, segments and language."""
        return cls(
            task="transcribe",
            language=language,
            duration=round(duration, 3),
            text=text,
            segments=[
                TranscriptSegment(id=i, start=s["start"], end=s["end"], text=s["text"])
                for i, s in enumerate(segments)
            ],
        )


ErrorKind = Literal["invalid_request_error", "server_error", "requests"]
# Our codes that OpenAI names otherwise.
OPENAI_CODES = {RateLimited.code: "rate_limit_exceeded"}


class OpenAIErrorBody(Answer):
    """What went wrong."""

    message: Annotated[str, Field(description="For a person.")]
    type: ErrorKind
    """`requests` for too many requests (429), as OpenAI answers them."""
    param: Annotated[str | None, Field(description="The parameter at fault, e.g. `messages`.")]
    code: str | None
    """Stable machine code (the same as the problem codes of the other routes), or null for a
    plain HTTP error."""


class OpenAIError(Answer):
    """An error of the OpenAI-compatible routes, in OpenAI's shape."""

    error: OpenAIErrorBody
