"""Reads the body forms of `POST /v1/jobs` into one validated `Submission`: JSON and plain forms
as a `TextJobRequest`, multipart as an `UploadJobRequest`, and a raw recording with its options
in the query string (`JobOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.datastructures import FileStorage

from api.request_validation import parse_json_object, single_values, validate, validate_query
from api.schemas import JobOptions, TextJobRequest, UploadJobRequest
from models.audio import AudioInfo, inspect_upload
from models.errors import InvalidOption, MalformedMultipart, UnsupportedMediaType
from models.settings import Settings

WAV_MEDIA_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
# What browsers (MediaRecorder: audio/webm, audio/ogg, audio/mp4) and other clients label the
# other accepted formats. The label only admits a raw body; its bytes decide its format.
COMPRESSED_MEDIA_TYPES = frozenset(
    {
        "audio/webm",
        "video/webm",
        "audio/ogg",
        "audio/opus",
        "audio/mpeg",
        "audio/mp3",
        "audio/mp4",
        "audio/m4a",
        "audio/x-m4a",
        "audio/aac",
        "audio/flac",
        "audio/x-flac",
    }
)
AUDIO_MEDIA_TYPES = WAV_MEDIA_TYPES | COMPRESSED_MEDIA_TYPES


class ApiRequest(Request):
    """A request whose multipart parser raises on malformed bodies instead of yielding nothing."""

    def make_form_data_parser(self) -> Any:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser


@dataclass(frozen=True)
class Submission:
    """A validated prompt: exactly one of text or audio, with its options."""

    options: JobOptions
    text: str | None = None
    audio: bytes | None = None
    audio_info: AudioInfo | None = None


def parse_submission(request: Request, settings: Settings) -> Submission:
    """Reads a job submission in any of its body forms (JSON, forms or a raw recording)."""
    # The query's options are a raw recording's, but are checked whatever the body, as the
    # document declares them for every body form.
    query = validate_query(JobOptions, settings)
    mimetype = request.mimetype
    if request.is_json:  # application/json or application/*+json
        body = parse_json_object(request.get_data(cache=False))
        prompt = validate(TextJobRequest, body, settings)
        return Submission(options=prompt, text=prompt.text)
    if mimetype == "application/x-www-form-urlencoded":
        prompt = validate(TextJobRequest, _form_fields(request), settings, from_strings=True)
        return Submission(options=prompt, text=prompt.text)
    if mimetype == "multipart/form-data":
        return _from_multipart(request, settings)
    if mimetype in AUDIO_MEDIA_TYPES:
        return _with_audio(query, request.get_data(cache=False), settings)
    shown = mimetype or "none"
    raise UnsupportedMediaType(
        f"Content-Type {shown} is not accepted; send application/json, multipart/form-data, "
        "application/x-www-form-urlencoded or a recording (audio/wav, audio/webm, audio/ogg, "
        "audio/mpeg, audio/mp4 or audio/flac)."
    )


def _form_fields(request: Request) -> dict[str, Any]:
    try:
        return single_values(request.form, "form field")
    except ValueError as error:
        raise MalformedMultipart(f"The multipart body cannot be parsed: {error}") from None


def _from_multipart(request: Request, settings: Settings) -> Submission:
    fields = _form_fields(request)
    files = request.files
    for name in files:
        if name != "audio":
            raise InvalidOption(
                f"Unknown file part {name!r}; the recording goes in 'audio'.", field=name
            )
    if "audio" in fields:
        raise InvalidOption("'audio' must be a file part, not a text field.", field="audio")
    uploads: list[FileStorage] = files.getlist("audio")
    if len(uploads) > 1:
        raise InvalidOption("Send one 'audio' file part, not several.", field="audio")
    if uploads:
        fields["audio"] = uploads[0].read()
    prompt = validate(UploadJobRequest, fields, settings, from_strings=True)
    if prompt.audio is None:
        return Submission(options=prompt, text=prompt.text)
    return _with_audio(prompt, prompt.audio, settings)


def _with_audio(options: JobOptions, audio: bytes, settings: Settings) -> Submission:
    info = inspect_upload(audio, settings)
    return Submission(options=options, audio=audio, audio_info=info)
