"""Path declarations of the OpenAI-compatible routes: what their shapes cannot say."""

from __future__ import annotations

from typing import Any

from api.openai_formats import SPEECH_FORMATS, SUBTITLE_MEDIA_TYPES
from api.openai_schemas import (
    TTS_MODEL_IDS,
    WHISPER_MODEL_ID,
    llm_model_id,
    speech_voices,
)
from api.openapi.common import (
    JOB_ERROR_CODES,
    OPENAI_RATE_LIMITED,
    PROBLEM_CODES,
    Schema,
    content,
    headers,
    openai_error,
    or_problem,
    ref,
    response,
    retry_after,
    schema_ref,
    too_many,
)
from models.settings import Settings

TAGS = ["OpenAI-compatible"]
# The job the request became, on every answer of a route that makes one.
JOB_ID_HEADERS = headers(**{"X-Job-Id": ref("headers", "JobId")})
SSE_HEADERS = {
    "Cache-Control": {"description": "Not to be cached.", "schema": {"const": "no-cache"}},
    "X-Accel-Buffering": {
        "description": "Tells nginx not to buffer the stream.",
        "schema": {"const": "no"},
    },
}
# A job that failed in the worker is answered with its code, as a 500.
JOB_FAILURES = ("engine_unavailable", "timeout", "worker_lost", "pipeline_error", "internal_error")


def paths(settings: Settings, components: dict[str, Schema]) -> dict[str, Any]:
    """The OpenAI-compatible paths, with the models, voices and limits of `settings`.

    Args:
        settings: The running settings.
        components: The generated component schemas; the request shapes get the enums the
            settings decide (the language model's id, the voices).

    Returns:
        The path items, by path.
    """
    _served_choices(settings, components)
    errors = _shared_errors(settings)
    return {
        "/v1/models": {"get": LIST_MODELS},
        "/v1/chat/completions": {"post": _chat_completions(settings, errors)},
        "/v1/audio/transcriptions": {"post": _transcriptions(settings, errors)},
        "/v1/audio/speech": {"post": _speech(settings, errors)},
    }


def _served_choices(settings: Settings, components: dict[str, Schema]) -> None:
    """Writes into the request components the choices that the validators read from the
    running settings, so the document is exactly as strict as the code."""
    model = components["ChatCompletionRequest"]["properties"]["model"]
    model["enum"] = [llm_model_id(settings)]
    voice = components["SpeechRequest"]["properties"]["voice"]
    voice["enum"] = speech_voices(settings)


def _shared_errors(settings: Settings) -> dict[str, Schema]:
    """The errors every job-making OpenAI-compatible route shares, by status."""
    upload_mb = settings.max_upload_bytes // (1024 * 1024)
    unavailable = openai_error(
        503,
        "Every place for a request that waits for its job is taken (checked once the request "
        "is valid, before a job is made), or a backing service is unreachable.",
        {
            code: PROBLEM_CODES[503][code]
            for code in ("server_busy", "queue_full", "broker_unavailable")
        },
    )
    too_many_requests = openai_error(
        429,
        "The caller is over its requests per minute, or has its number of unfinished jobs "
        "(checked before a job is made).",
        {
            **OPENAI_RATE_LIMITED,
            "too_many_unfinished_jobs": PROBLEM_CODES[429]["too_many_unfinished_jobs"],
        },
        "requests",
    )
    return {
        "404": openai_error(
            404,
            "No such model.",
            {
                "model_not_found": "`model` names no model of this route (see `GET /v1/models`); "
                "`param` is `model`"
            },
        ),
        "413": openai_error(
            413,
            "The body is too large.",
            {None: f"the body is over MAX_UPLOAD_MB ({upload_mb} MB)"},
        ),
        "409": openai_error(
            409,
            "The job was canceled before it finished.",
            {
                "canceled": "the job was canceled (`DELETE /v1/jobs/{job_id}`, or "
                "`POST /v1/jobs/{job_id}/cancel`) while this request waited for it"
            },
        ),
        "429": too_many(too_many_requests),
        "503": retry_after(or_problem(unavailable, 503, "database_unavailable")),
        "504": openai_error(
            504,
            "The job took too long to wait for.",
            {
                "wait_timeout": "the job did not finish within twice TASK_TIME_LIMIT "
                f"({settings.task_time_limit * 2} s here); it goes on, under "
                "`/v1/jobs/{job_id}`"
            },
        ),
    }


def _job_failed(*job_codes: str) -> Schema:
    """The 500 of a job-making route: the job's own failure, or an unexpected failure."""
    failed = openai_error(
        500,
        "The job failed in the worker; the code is the job's `error.code`.",
        {code: JOB_ERROR_CODES[code] for code in job_codes},
    )
    return or_problem(failed, 500, "internal_error")


def _problems(status: int, summary: str, *codes: str) -> Schema:
    """An OpenAI-shaped error for codes that are problem codes on the other routes."""
    return openai_error(status, summary, {code: PROBLEM_CODES[status][code] for code in codes})


LIST_MODELS = {
    "operationId": "list_models",
    "tags": TAGS,
    "summary": "List models",
    "description": "The models this service answers with: the language model (its id is "
    "LLM_MODEL, else the file name of LLM_MODEL_PATH without extension, else "
    f"`SmolLM2-135M-Instruct`), `{WHISPER_MODEL_ID}` for transcription and "
    + ", ".join(f"`{i}`" for i in TTS_MODEL_IDS)
    + " for speech.",
    "responses": {"200": response("The models.", schema_ref("ModelList"))},
}


def _json_text(schema: Schema) -> Schema:
    """The schema of an event's `data`: one line of JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


CHAT_EVENT = {
    "type": "object",
    "description": "With `stream: true`, Server-Sent Events; this schema describes each event, "
    "as OpenAPI 3.2's `itemSchema` does. Each `data` is a `ChatCompletionChunk`: first the "
    "assistant role, then a `delta.content` per piece of the reply, then an empty delta with "
    "`finish_reason`, then with `include_usage` one with `usage` and no choices. A job that "
    "fails sends an `OpenAIError` instead of the last chunks, and so does one whose worker was "
    "lost after some of the reply was sent (`worker_lost`: the job runs again, see `X-Job-Id`, "
    "but its text is never sent twice). The stream ends with `data: [DONE]`.",
    "properties": {
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": _json_text(
                {"oneOf": [schema_ref("ChatCompletionChunk"), schema_ref("OpenAIError")]}
            ),
        },
    },
    "required": ["data"],
}


def _chat_completions(settings: Settings, errors: dict[str, Schema]) -> Schema:
    return {
        "operationId": "create_chat_completion",
        "tags": TAGS,
        "summary": "Chat completion",
        "description": "OpenAI's chat completion, as a job (`X-Job-Id`) the request waits for: "
        "whole, or streamed as it is generated.\n\n"
        "Beyond the schema: the last message must be the user's, and its content, trimmed, "
        "non-blank (422 `empty_text`, `param` `messages[N].content`); content parts joined "
        "count against the per-message limit, and all contents together against MAX_CHAT_CHARS "
        f"({settings.max_chat_chars} here; 422 `messages_too_long`); `stream_options` needs "
        "`stream: true`.",
        "requestBody": {"required": True, "content": content(schema_ref("ChatCompletionRequest"))},
        "responses": {
            "200": {
                "description": "The completion; a stream of chunks with `stream: true`.",
                "headers": {**JOB_ID_HEADERS, **SSE_HEADERS},
                "content": {
                    **content(schema_ref("ChatCompletion")),
                    "text/event-stream": {"schema": CHAT_EVENT},
                },
            },
            "400": _problems(400, "The body cannot be read.", "malformed_json"),
            "404": errors["404"],
            "413": errors["413"],
            "415": _problems(415, "The body is not `application/json`.", "unsupported_media_type"),
            "422": _problems(
                422,
                "A parameter is unknown or unacceptable (`param` names it), or the job failed "
                "because the prompt is too long for the model.",
                "invalid_option",
                "empty_text",
                "messages_too_long",
                "context_length_exceeded",
            ),
            "409": errors["409"],
            "429": errors["429"],
            "500": _job_failed("empty_reply", *JOB_FAILURES),
            "503": errors["503"],
            "504": errors["504"],
        },
    }


TRANSCRIPT = {
    "description": "The transcript in `response_format`: `json` and `verbose_json` as JSON, "
    "`text` as plain text (with a final newline), `srt` and `vtt` as subtitles.",
    "headers": JOB_ID_HEADERS,
    "content": {
        **content({"oneOf": [schema_ref("Transcription"), schema_ref("VerboseTranscription")]}),
        **{
            media_type: {"schema": {"type": "string"}}
            for media_type in SUBTITLE_MEDIA_TYPES.values()
        },
    },
}


def _transcriptions(settings: Settings, errors: dict[str, Schema]) -> Schema:
    body = {
        **schema_ref("TranscriptionRequest"),
        "description": "The recording (a WAV of at most MAX_AUDIO_SECONDS, "
        f"{settings.max_audio_seconds:g} s here) as the `file` part. `language` defaults to "
        f"WHISPER_LANGUAGE (`{settings.whisper_language}` here).",
    }
    return {
        "operationId": "create_transcription",
        "tags": TAGS,
        "summary": "Transcribe a recording",
        "description": "OpenAI's transcription, as a job (`X-Job-Id`) the request waits for. A "
        "recording without speech gives an empty transcript.",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": body,
                    "encoding": {"file": {"contentType": "audio/wav"}},
                },
            },
        },
        "responses": {
            "200": TRANSCRIPT,
            "400": _problems(
                400,
                "The body cannot be read, or it has no single `file` part.",
                "malformed_multipart",
                "missing_input",
            ),
            "404": errors["404"],
            "413": errors["413"],
            "415": _problems(
                415,
                "The body is not `multipart/form-data`, or the file is not a WAV.",
                *PROBLEM_CODES[415],
            ),
            "422": _problems(
                422,
                "A field is unknown, repeated or unacceptable (`param` names it), or the WAV "
                "cannot be used.",
                "invalid_option",
                "invalid_audio",
                "audio_truncated",
                "empty_audio",
                "audio_too_long",
                "unsupported_audio_encoding",
                "unsupported_audio_channels",
                "unsupported_sample_rate",
                "audio_too_many_chunks",
            ),
            "409": errors["409"],
            "429": errors["429"],
            "500": _job_failed(*JOB_FAILURES),
            "503": errors["503"],
            "504": errors["504"],
            "507": _problems(
                507, "The recording cannot be stored: disk full.", "insufficient_storage"
            ),
        },
    }


def _speech(settings: Settings, errors: dict[str, Schema]) -> Schema:
    audio = {
        media_type: {"schema": {"type": "string", "format": "binary", "description": f"`{name}`."}}
        for name, media_type in SPEECH_FORMATS.items()
    }
    return {
        "operationId": "create_speech",
        "tags": TAGS,
        "summary": "Speak a text",
        "description": "OpenAI's text to speech, as a job (`X-Job-Id`). `wav` and `pcm` are "
        "streamed as OpenAI streams speech: each sentence as soon as it is spoken (the WAV's "
        "sizes say unknown, `0xFFFFFFFF`); the other formats are encoded once all is said. "
        f"OpenAI's voices speak with TTS_VOICE (`{settings.tts_voice}` here).",
        "requestBody": {"required": True, "content": content(schema_ref("SpeechRequest"))},
        "responses": {
            "200": {
                "description": "The audio, in `response_format`.",
                "headers": JOB_ID_HEADERS,
                "content": audio,
            },
            "400": _problems(400, "The body cannot be read.", "malformed_json"),
            "404": errors["404"],
            "413": errors["413"],
            "415": _problems(415, "The body is not `application/json`.", "unsupported_media_type"),
            "422": _problems(
                422,
                "A parameter is unknown or unacceptable (`param` names it).",
                "invalid_option",
                "empty_text",
            ),
            "409": errors["409"],
            "429": errors["429"],
            "500": _job_failed(*JOB_FAILURES),
            "503": errors["503"],
            "504": errors["504"],
        },
    }
