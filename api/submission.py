"""Parses and validates the three body forms of `POST /v1/jobs` into one `Submission`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request
from werkzeug.datastructures import FileStorage, MultiDict

from models.audio import AudioInfo, inspect_wav
from models.errors import (
    ConflictingInput,
    EmptyText,
    InvalidOption,
    MalformedJson,
    MalformedMultipart,
    MissingInput,
    TextTooLong,
    UnsupportedMediaType,
)
from models.job import ReplyFormat
from models.settings import Settings

WAV_MEDIA_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
OPTION_NAMES = ("reply", "system", "max_tokens", "temperature", "voice", "conversation_id")
MAX_TEMPERATURE = 2.0


class ApiRequest(Request):
    """A request whose multipart parser raises on malformed bodies instead of yielding nothing."""

    def make_form_data_parser(self) -> Any:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser


@dataclass(frozen=True)
class Submission:
    """A validated prompt: exactly one of text or audio, the reply format, generation options."""

    reply: ReplyFormat
    text: str | None = None
    audio: bytes | None = None
    audio_info: AudioInfo | None = None
    options: dict[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None


def parse_submission(request: Request, settings: Settings) -> Submission:
    """Reads a job submission in any of its three forms.

    Args:
        request: The incoming request (JSON, multipart form, or a raw WAV body).
        settings: Limits and the known voices.

    Returns:
        The validated submission.

    Raises:
        VoiceChatError: A subclass naming exactly what is wrong with the request.
    """
    mimetype = request.mimetype
    if mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        return _from_json(request.get_data(cache=False), settings)
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _from_form(request, settings)
    if mimetype in WAV_MEDIA_TYPES:
        fields = _single_values(request.args, "query parameter")
        return _build(fields, None, request.get_data(cache=False), settings, typed=False)
    shown = mimetype or "none"
    raise UnsupportedMediaType(
        f"Content-Type {shown} is not accepted; send application/json, multipart/form-data, "
        "application/x-www-form-urlencoded or audio/wav."
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parses a JSON body that must be an object; NaN and Infinity are not JSON.

    Raises:
        MalformedJson: The body is not JSON, or not an object.
    """

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        raise MalformedJson(f"The body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise MalformedJson("The JSON body must be an object.")
    return payload


def _from_json(body: bytes, settings: Settings) -> Submission:
    payload = parse_json_object(body)
    if "audio" in payload:
        raise InvalidOption(
            "Audio cannot travel in JSON; send it as multipart/form-data or as an audio/wav body.",
            field="audio",
        )
    text = payload.pop("text", None)
    if text is not None and not isinstance(text, str):
        raise InvalidOption("text must be a string.", field="text")
    return _build(payload, text, None, settings, typed=True)


def _from_form(request: Request, settings: Settings) -> Submission:
    try:
        form, files = request.form, request.files
    except ValueError as error:
        raise MalformedMultipart(f"The multipart body cannot be parsed: {error}") from None
    for name in files:
        if name != "audio":
            raise InvalidOption(
                f"Unknown file part {name!r}; the recording goes in 'audio'.", field=name
            )
    uploads: list[FileStorage] = files.getlist("audio")
    if len(uploads) > 1:
        raise InvalidOption("Send one 'audio' file part, not several.", field="audio")
    fields = _single_values(form, "form field")
    if "audio" in fields:
        raise InvalidOption("'audio' must be a file part, not a text field.", field="audio")
    text = fields.pop("text", None)
    audio = uploads[0].read() if uploads else None
    return _build(fields, text, audio, settings, typed=False)


def _single_values(values: MultiDict[str, str], kind: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in values:
        items = values.getlist(name)
        if len(items) != 1:
            raise InvalidOption(f"The {kind} {name!r} is given {len(items)} times.", field=name)
        result[name] = items[0]
    return result


def _build(
    raw: dict[str, Any], text: str | None, audio: bytes | None, settings: Settings, *, typed: bool
) -> Submission:
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise InvalidOption(
            f"Unknown field {unknown[0]!r}; accepted: text, audio, {', '.join(OPTION_NAMES)}.",
            field=unknown[0],
        )
    if text is not None and audio is not None:
        raise ConflictingInput("Send either text or audio, not both.")
    if text is None and audio is None:
        raise MissingInput("Send a prompt: a 'text' field or an 'audio' WAV.")
    reply = _reply(raw.get("reply"))
    options = _options(raw, settings, typed=typed)
    conversation_id = _conversation_id(raw.get("conversation_id"))
    if text is not None:
        return Submission(
            reply=reply,
            text=prompt_text(text, settings),
            options=options,
            conversation_id=conversation_id,
        )
    assert audio is not None
    info = inspect_wav(audio, settings.max_audio_seconds)
    return Submission(
        reply=reply, audio=audio, audio_info=info, options=options, conversation_id=conversation_id
    )


def _conversation_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_resource_id(value):
        raise InvalidOption(
            "conversation_id must be an id returned by POST /v1/conversations.",
            field="conversation_id",
        )
    return value


def is_resource_id(value: str) -> bool:
    """Whether `value` has the shape of a job or conversation id (32 lowercase hex digits)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _reply(value: Any) -> ReplyFormat:
    if value is None:
        return ReplyFormat.TEXT
    try:
        return ReplyFormat(value)
    except ValueError:
        raise InvalidOption("reply must be 'text' or 'voice'.", field="reply") from None


def prompt_text(text: str, settings: Settings, *, field: str = "text") -> str:
    """Validates a prompt: encodable, not blank, within MAX_TEXT_CHARS; returns it stripped."""
    check_encodable(text, field)
    stripped = text.strip()
    if not stripped:
        raise EmptyText(f"The {field} is empty.", field=field)
    if len(stripped) > settings.max_text_chars:
        raise TextTooLong(
            f"The {field} has {len(stripped)} characters; the limit is {settings.max_text_chars}.",
            field=field,
        )
    return stripped


def check_encodable(value: str, name: str) -> None:
    # PostgreSQL refuses NUL in text and lone surrogates cannot be stored as UTF-8: both
    # would surface as a 500 on insert, so they are refused here.
    if "\x00" in value:
        raise InvalidOption(f"{name} must not contain NUL characters.", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOption(f"{name} must be valid Unicode text.", field=name) from None


def _options(raw: Mapping[str, Any], settings: Settings, *, typed: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if raw.get("system") is not None:
        options["system"] = system_prompt(raw["system"], settings)
    if raw.get("max_tokens") is not None:
        options["max_tokens"] = parse_max_tokens(raw["max_tokens"], settings, typed=typed)
    if raw.get("temperature") is not None:
        options["temperature"] = parse_temperature(raw["temperature"], typed=typed)
    if raw.get("voice") is not None:
        voice = raw["voice"]
        if not isinstance(voice, str) or voice not in settings.tts_voices:
            raise InvalidOption(
                f"voice must be one of {', '.join(settings.tts_voices)}.", field="voice"
            )
        options["voice"] = voice
    return options


def system_prompt(system: Any, settings: Settings) -> str:
    """Validates a system prompt (a string within MAX_SYSTEM_CHARS); returns it stripped."""
    if not isinstance(system, str):
        raise InvalidOption("system must be a string.", field="system")
    check_encodable(system, "system")
    if len(system) > settings.max_system_chars:
        raise InvalidOption(
            f"system has {len(system)} characters; the limit is {settings.max_system_chars}.",
            field="system",
        )
    return system.strip()


def parse_max_tokens(value: Any, settings: Settings, *, typed: bool) -> int:
    limit = settings.max_tokens_limit
    message = f"max_tokens must be a whole number from 1 to {limit}."
    if typed:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidOption(message, field="max_tokens")
        number = value
    else:
        text = str(value).strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise InvalidOption(message, field="max_tokens")
        number = int(text)
    if not 1 <= number <= limit:
        raise InvalidOption(message, field="max_tokens")
    return number


def parse_temperature(value: Any, *, typed: bool) -> float:
    message = f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}."
    if typed:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOption(message, field="temperature")
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise InvalidOption(message, field="temperature") from None
    if not math.isfinite(number) or not 0.0 <= number <= MAX_TEMPERATURE:
        raise InvalidOption(message, field="temperature")
    return number
