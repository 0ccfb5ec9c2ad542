"""The OpenAI routes' output formats: speech audio encodings, subtitles, and SSE chunk framing."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

from api.openapi.declare import content, json_text, schema_ref

if TYPE_CHECKING:
    from api.openai.schemas import TranscriptSegment

# Transcript formats, as OpenAI names them; `json` and `verbose_json` are answer models.
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SUBTITLE_MEDIA_TYPES = {
    "text": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}
# The Ogg Opus rate (it takes 8, 12, 16, 24 or 48 kHz).
OPUS_RATE = 48_000
# The encoded speech formats: media type, libsndfile's format and subtype, rate (None: the WAV's).
ENCODINGS = {
    "flac": ("audio/flac", "FLAC", "PCM_16", None),
    "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III", None),  # libsndfile 1.1+
    "opus": ("audio/ogg", "OGG", "OPUS", OPUS_RATE),
}
# Speech formats and their media types: what libsndfile here can write.
SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"} | {
    name: media_type
    for name, (media_type, container, subtype, _rate) in ENCODINGS.items()
    if container in sf.available_formats() and subtype in sf.available_subtypes(container)
}
# OpenAI's default is mp3; where it cannot be written, WAV.
DEFAULT_SPEECH_FORMAT = "mp3" if "mp3" in SPEECH_FORMATS else "wav"
# OpenAI's `pcm` is 24 kHz 16-bit little-endian mono without a header.
PCM_RATE = 24_000
# The last event of a streamed chat completion, as OpenAI sends it.
STREAM_END = "data: [DONE]\n\n"

# The documented answers of each format (api/openapi/).
CHAT_ANSWERS = {
    **content(schema_ref("ChatCompletion")),
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "With `stream: true`, Server-Sent Events; this schema describes each "
            "event, as OpenAPI 3.2's `itemSchema` does. Each `data` is a `ChatCompletionChunk`: "
            "first the assistant role, then a `delta.content` per piece of the reply, then an "
            "empty delta with `finish_reason`, then with `include_usage` one with `usage` and no "
            "choices. A job that fails sends an `OpenAIError` instead of the last chunks, and so "
            "does one whose worker was lost after some of the reply was sent (`worker_lost`: the "
            "job runs again, see `X-Job-Id`, but its text is never sent twice). The stream ends "
            "with `data: [DONE]`.",
            "properties": {
                "data": {
                    "type": "string",
                    "if": {"const": "[DONE]"},
                    "else": json_text(
                        {"oneOf": [schema_ref("ChatCompletionChunk"), schema_ref("OpenAIError")]}
                    ),
                },
            },
            "required": ["data"],
        }
    },
}
TRANSCRIPT_ANSWERS = {
    **content({"oneOf": [schema_ref("Transcription"), schema_ref("VerboseTranscription")]}),
    **{media_type: {"schema": {"type": "string"}} for media_type in SUBTITLE_MEDIA_TYPES.values()},
}
SPEECH_ANSWERS = {
    media_type: {"schema": {"type": "string", "format": "binary", "description": f"`{name}`."}}
    for name, media_type in SPEECH_FORMATS.items()
}


def timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS,mmm` (SRT, with `,`) or `HH:MM:SS.mmm` (WebVTT, with `.`)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def transcript_text(response_format: str, text: str, cues: Sequence[TranscriptSegment]) -> str:
    """A transcript as `text` (with a final newline), `srt` (SubRip) or `vtt` (WebVTT)."""
    if response_format == "text":
        return text + "\n"
    if response_format == "srt":
        return "\n".join(
            f"{index}\n{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}\n{cue.text}\n"
            for index, cue in enumerate(cues, start=1)
        )
    blocks = [f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def encode_speech(wav: bytes, response_format: str) -> bytes:
    """The synthesizer's WAV in one of `SPEECH_FORMATS`; `pcm` at 24 kHz, `opus` at 48 kHz."""
    if response_format == "wav":
        return wav
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if response_format == "pcm":
        samples = soxr.resample(samples, rate, PCM_RATE) if rate != PCM_RATE else samples
        return bytes(np.clip(samples * 32768.0, -32768, 32767).astype("<i2").tobytes())
    _media_type, container, subtype, wanted = ENCODINGS[response_format]
    if wanted is not None and wanted != rate:
        samples, rate = soxr.resample(samples, rate, wanted), wanted
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, subtype, format=container)
    return bytes(buffer.getvalue())
