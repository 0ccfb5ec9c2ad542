"""OpenAI-compatible routes over the same queue and worker: chat, transcription, speech, models.

Shapes and defaults follow OpenAI's API reference, so the official SDKs work unchanged with
`base_url` pointed here. Every request becomes a job like any other (visible under /v1/jobs);
the route then follows the job's event stream to answer, and errors use OpenAI's
`{"error": {message, type, param, code}}` body.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from api.errors import status_for
from api.events import IDLE, KEEP_ALIVE, follow, read_job, sse_response, wait_for
from api.jobs import submit
from api.submission import (
    check_encodable,
    parse_json_object,
    parse_max_tokens,
    parse_temperature,
    prompt_text,
)
from models import events
from models.audio import inspect_wav
from models.errors import (
    InvalidOption,
    MalformedMultipart,
    MissingInput,
    ModelNotFound,
    NoSpeech,
    UnsupportedMediaType,
    VoiceChatError,
    WaitTimedOut,
    error_for_code,
)
from models.job import InputKind, Job, JobStatus, Operation, ReplyFormat, new_job_id
from models.settings import Settings
from models.storage import FileStore

blueprint = Blueprint("openai", __name__)

WHISPER_MODEL_ID = "whisper-1"
TTS_MODEL_IDS = ("tts-1", "tts-1-hd")
# OpenAI's voices; each speaks with the configured default voice here.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
)
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 1000
MAX_MESSAGE_CHARS = 32_000
MAX_SPEECH_CHARS = 4096
MAX_TRANSCRIPTION_PROMPT_CHARS = 2000
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
# OpenAI's `pcm` is 24 kHz 16-bit little-endian mono without a header.
PCM_RATE = 24_000
SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
if "MP3" in sf.available_formats():  # libsndfile 1.1+ writes MPEG layer III
    SPEECH_FORMATS["mp3"] = "audio/mpeg"
if "OGG" in sf.available_formats() and "OPUS" in sf.available_subtypes("OGG"):
    SPEECH_FORMATS["opus"] = "audio/ogg"


def llm_model_id(settings: Settings) -> str:
    """The id the language model is served under."""
    if settings.llm_model:
        return settings.llm_model
    if settings.llm_model_path:
        return Path(settings.llm_model_path).stem
    return "SmolLM2-135M-Instruct"


def _error_object(error: VoiceChatError) -> dict[str, Any]:
    """OpenAI's error object for a domain error: the request's fault or the server's."""
    kind = "invalid_request_error" if status_for(error) < 500 else "server_error"
    return {
        "message": error.detail,
        "type": kind,
        "param": error.extra.get("field"),
        "code": error.code,
    }


@blueprint.errorhandler(VoiceChatError)
def _openai_error(error: VoiceChatError) -> Response:
    response = jsonify({"error": _error_object(error)})
    response.status_code = status_for(error)
    return response


@blueprint.errorhandler(HTTPException)
def _openai_http_error(error: HTTPException) -> Response:
    message = error.description or error.name
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    response = jsonify({"error": body})
    response.status_code = error.code or 500
    return response


@blueprint.get("/v1/models")
def list_models() -> Response:
    """Lists the models this service answers with (one per stage)."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    created = 1_700_000_000
    ids = [llm_model_id(settings), WHISPER_MODEL_ID, *TTS_MODEL_IDS]
    data = [{"id": i, "object": "model", "created": created, "owned_by": "voicechat"} for i in ids]
    return jsonify({"object": "list", "data": data})


def _json_object() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the request body as application/json.")
    return parse_json_object(request.get_data(cache=False))


def _reject_unknown(payload: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(payload) - known)
    if unknown:
        raise InvalidOption(f"Unsupported parameter {unknown[0]!r}.", field=unknown[0])


def _model(value: Any, accepted: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOption("model is required.", field="model")
    if value not in accepted:
        raise ModelNotFound(
            f"The model {value!r} does not exist here; use one of {', '.join(accepted)}.",
            field="model",
        )
    return value


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidOption(
                    "Only text content parts are supported.", field=f"messages[{index}].content"
                )
            texts.append(part.get("text"))
        content = "".join(t for t in texts if isinstance(t, str))
    if not isinstance(content, str):
        raise InvalidOption("content must be a string.", field=f"messages[{index}].content")
    check_encodable(content, f"messages[{index}].content")
    if len(content) > MAX_MESSAGE_CHARS:
        raise InvalidOption(
            f"A message may have at most {MAX_MESSAGE_CHARS} characters.",
            field=f"messages[{index}].content",
        )
    return content


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidOption("messages must be a non-empty array.", field="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidOption(f"At most {MAX_MESSAGES} messages are accepted.", field="messages")
    messages = []
    for index, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise InvalidOption(
                f"Each message needs a role: one of {', '.join(CHAT_ROLES)}.",
                field=f"messages[{index}].role",
            )
        messages.append({"role": CHAT_ROLES[role], "content": _content(message, index)})
    if messages[-1]["role"] != "user":
        raise InvalidOption("The last message must be the user's.", field="messages")
    return messages


def _stream_options(payload: dict[str, Any], stream: bool) -> bool:
    options = payload.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidOption("stream_options needs stream: true.", field="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidOption("stream_options accepts include_usage only.", field="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidOption("include_usage must be a boolean.", field="stream_options")
    return include


def _sync_wait(settings: Settings) -> float:
    # A request held for a job: as long as the job may run, and a queue's worth more.
    return float(settings.task_time_limit * 2)


def _succeeded(job: Job, settings: Settings) -> Job:
    """Waits for the job; raises the job's own error if it failed, or WaitTimedOut."""
    finished = wait_for(job.id, _sync_wait(settings))
    if finished is None:
        raise WaitTimedOut(f"Job {job.id} is still running; follow it at /v1/jobs/{job.id}.")
    if finished.status != JobStatus.SUCCEEDED.value:
        raise error_for_code(finished.error_code or "internal_error", finished.error_message or "")
    return finished


@blueprint.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Answers a chat, whole or streamed as `chat.completion.chunk` events."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    payload = _json_object()
    _reject_unknown(
        payload,
        {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "stream",
            "stream_options",
            "n",
            "user",
        },
    )
    model = _model(payload.get("model"), (llm_model_id(settings),))
    messages = _messages(payload.get("messages"))
    prompt = prompt_text(messages[-1]["content"], settings)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidOption("stream must be a boolean.", field="stream")
    include_usage = _stream_options(payload, stream)
    if payload.get("n") not in (None, 1):
        raise InvalidOption("Only n=1 is supported.", field="n")
    options: dict[str, Any] = {"system": "", "whole_sentences": False}
    limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if limit is not None:
        options["max_tokens"] = parse_max_tokens(limit, settings, typed=True)
    if payload.get("temperature") is not None:
        options["temperature"] = parse_temperature(payload["temperature"], typed=True)
    job = submit(
        Job(
            id=new_job_id(),
            status=JobStatus.QUEUED.value,
            operation=Operation.CHAT.value,
            reply_format=ReplyFormat.TEXT.value,
            input_kind=InputKind.TEXT.value,
            input_text=prompt,
            history=messages[:-1],
            options=options,
        )
    )
    completion_id = f"chatcmpl-{job.id}"
    created = int(job.created_at.timestamp())
    if stream:
        chunks = _completion_chunks(job.id, completion_id, created, model, include_usage)
        response = sse_response(chunks)
    else:
        finished = _succeeded(job, settings)
        response = jsonify(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": finished.reply_text or "",
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": finished.finish_reason or "stop",
                    }
                ],
                "usage": _usage(finished),
                "system_fingerprint": None,
            }
        )
    response.headers["X-Job-Id"] = job.id
    return response


def _usage(job: Job) -> dict[str, int]:
    prompt, completion = job.prompt_tokens or 0, job.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_chunks(
    job_id: str, completion_id: str, created: int, model: str, include_usage: bool
) -> Iterator[str]:
    def frame(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
        return frame([choice])

    settings: Settings = current_app.extensions["voicechat.settings"]
    yield delta({"role": "assistant", "content": ""})
    # A job rerun after its worker was lost streams its reply again from the start.
    for event in follow(job_id, timeout=_sync_wait(settings)):
        if event.type == events.DELTA:
            yield delta({"content": event.data["text"]})
        elif event.type == IDLE:
            yield KEEP_ALIVE
    job = read_job(job_id)
    if job is None or job.status != JobStatus.SUCCEEDED.value:
        code = (job and job.error_code) or WaitTimedOut.code
        message = (job and job.error_message) or "The job did not finish in time."
        yield f"data: {json.dumps({'error': _error_object(error_for_code(code, message))})}\n\n"
    else:
        yield delta({}, job.finish_reason or "stop")
        if include_usage:
            yield frame([], usage=_usage(job))
    yield "data: [DONE]\n\n"


def _form_field(form: Any, name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise InvalidOption(f"The form field {name!r} is given {len(values)} times.", field=name)
    return values[0] if values else None


@blueprint.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    """Transcribes an uploaded WAV: json, text, verbose_json, srt or vtt."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Send the recording as multipart/form-data with a 'file' part.")
    try:
        form, files = request.form, request.files
    except ValueError as error:
        raise MalformedMultipart(f"The multipart body cannot be parsed: {error}") from None
    known = {"model", "language", "prompt", "response_format", "temperature"}
    known |= {"timestamp_granularities[]"}
    _reject_unknown(dict.fromkeys(form), known)
    _reject_unknown(dict.fromkeys(files), {"file"})
    uploads = files.getlist("file")
    if len(uploads) != 1:
        raise MissingInput("Send exactly one 'file' part holding a WAV recording.")
    _model(_form_field(form, "model"), (WHISPER_MODEL_ID,))
    response_format = _form_field(form, "response_format") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise InvalidOption(
            f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}.",
            field="response_format",
        )
    options: dict[str, Any] = {}
    language = _form_field(form, "language")
    if language is not None:
        if not (language.isascii() and language.isalpha() and 2 <= len(language) <= 3):
            raise InvalidOption(
                "language must be an ISO-639-1 code such as 'en'.", field="language"
            )
        options["language"] = language.lower()
    prompt = _form_field(form, "prompt")
    if prompt:
        check_encodable(prompt, "prompt")
        if len(prompt) > MAX_TRANSCRIPTION_PROMPT_CHARS:
            raise InvalidOption(
                f"prompt may have at most {MAX_TRANSCRIPTION_PROMPT_CHARS} characters.",
                field="prompt",
            )
        options["prompt"] = prompt
    temperature = _form_field(form, "temperature")
    if temperature is not None:  # accepted for compatibility; decoding is beam search
        parse_temperature(temperature, typed=False)
    for granularity in form.getlist("timestamp_granularities[]"):
        if granularity != "segment":
            raise InvalidOption(
                "Only segment timestamps are available.", field="timestamp_granularities[]"
            )
    audio = uploads[0].read()
    info = inspect_wav(audio, settings.max_audio_seconds)
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED.value,
        operation=Operation.TRANSCRIBE.value,
        reply_format=ReplyFormat.TEXT.value,
        input_audio_seconds=round(info.seconds, 3),
        options=options,
    )
    submit(job, audio)
    try:
        finished = _succeeded(job, settings)
        text, segments = finished.transcript or "", finished.transcript_segments or []
        language_found = finished.transcript_language
    except NoSpeech:  # OpenAI answers silence with an empty transcript, not an error
        text, segments, language_found = "", [], options.get("language")
    response = _transcription_response(
        response_format, text, segments, language_found, info.seconds
    )
    response.headers["X-Job-Id"] = job.id
    return response


def _transcription_response(
    response_format: str,
    text: str,
    segments: list[dict[str, Any]],
    language: str | None,
    duration: float,
) -> Response:
    if response_format == "json":
        return jsonify({"text": text})
    if response_format == "verbose_json":
        return jsonify(
            {
                "task": "transcribe",
                "language": language,
                "duration": round(duration, 3),
                "text": text,
                "segments": [
                    {"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                    for i, s in enumerate(segments)
                ],
            }
        )
    if response_format == "text":
        return Response(text + "\n", mimetype="text/plain")
    cues = segments or ([{"start": 0.0, "end": duration, "text": text}] if text else [])
    if response_format == "srt":
        blocks = [
            f"{i}\n{_stamp(c['start'], ',')} --> {_stamp(c['end'], ',')}\n{c['text']}\n"
            for i, c in enumerate(cues, start=1)
        ]
        return Response("\n".join(blocks), mimetype="application/x-subrip")
    blocks = [f"{_stamp(c['start'], '.')} --> {_stamp(c['end'], '.')}\n{c['text']}\n" for c in cues]
    return Response("WEBVTT\n\n" + "\n".join(blocks), mimetype="text/vtt")


def _stamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


@blueprint.post("/v1/audio/speech")
def speech() -> Response:
    """Speaks `input` and returns the audio in `response_format`."""
    settings: Settings = current_app.extensions["voicechat.settings"]
    payload = _json_object()
    _reject_unknown(payload, {"model", "input", "voice", "response_format", "speed"})
    _model(payload.get("model"), TTS_MODEL_IDS)
    text = payload.get("input")
    if not isinstance(text, str):
        raise InvalidOption("input must be a string.", field="input")
    if len(text) > MAX_SPEECH_CHARS:
        raise InvalidOption(f"input may have at most {MAX_SPEECH_CHARS} characters.", field="input")
    # OpenAI's limit for speech, not MAX_TEXT_CHARS (the prompt limit), applies here.
    text = prompt_text(text, replace(settings, max_text_chars=MAX_SPEECH_CHARS), field="input")
    voice = payload.get("voice")
    if not isinstance(voice, str) or (
        voice not in OPENAI_VOICES and voice not in settings.tts_voices
    ):
        raise InvalidOption(
            f"voice must be one of {', '.join(sorted(OPENAI_VOICES | set(settings.tts_voices)))}.",
            field="voice",
        )
    response_format = payload.get("response_format", "mp3" if "mp3" in SPEECH_FORMATS else "wav")
    if not isinstance(response_format, str) or response_format not in SPEECH_FORMATS:
        raise InvalidOption(
            f"response_format must be one of {', '.join(SPEECH_FORMATS)} here.",
            field="response_format",
        )
    speed = payload.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise InvalidOption("speed must be a number from 0.25 to 4.0.", field="speed")
    options = {
        "voice": settings.tts_voice if voice in OPENAI_VOICES else voice,
        "speed": float(speed),
    }
    job = Job(
        id=new_job_id(),
        status=JobStatus.QUEUED.value,
        operation=Operation.SPEAK.value,
        reply_format=ReplyFormat.VOICE.value,
        input_kind=InputKind.TEXT.value,
        input_text=text,
        options=options,
    )
    submit(job)
    finished = _succeeded(job, settings)
    results: FileStore = current_app.extensions["voicechat.results"]
    assert finished.reply_audio_file is not None
    wav = results.path(finished.reply_audio_file).read_bytes()
    response = Response(_encode(wav, response_format), mimetype=SPEECH_FORMATS[response_format])
    response.headers["X-Job-Id"] = job.id
    return response


def _encode(wav: bytes, response_format: str) -> bytes:
    if response_format == "wav":
        return wav
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if response_format == "pcm":
        resampled = soxr.resample(samples, rate, PCM_RATE) if rate != PCM_RATE else samples
        pcm = np.clip(resampled * 32768.0, -32768, 32767).astype("<i2")
        return bytes(pcm.tobytes())
    buffer = io.BytesIO()
    if response_format == "flac":
        sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
    elif response_format == "mp3":
        sf.write(buffer, samples, rate, format="MP3", subtype="MPEG_LAYER_III")
    else:  # opus: Ogg Opus wants 8, 12, 16, 24 or 48 kHz
        resampled = soxr.resample(samples, rate, 48_000) if rate != 48_000 else samples
        sf.write(buffer, resampled, 48_000, format="OGG", subtype="OPUS")
    return bytes(buffer.getvalue())
