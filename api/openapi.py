"""The service's OpenAPI 3.1 description, built once at import and served at `GET /openapi.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, jsonify

from api.errors import PROBLEM_JSON
from api.jobs import DEFAULT_PAGE, MAX_PAGE
from api.submission import MAX_TEMPERATURE, WAV_MEDIA_TYPES
from models.settings import Settings

blueprint = Blueprint("openapi", __name__)

Schema = dict[str, Any]

# Defaults of the settings (models/settings.py); each is overridable through the environment,
# and the document names the variable beside the default.
_DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(Settings)}
MAX_UPLOAD_MB = _DEFAULTS["max_upload_bytes"] // (1024 * 1024)
MAX_AUDIO_SECONDS = int(_DEFAULTS["max_audio_seconds"])
MAX_TEXT_CHARS = _DEFAULTS["max_text_chars"]
MAX_SYSTEM_CHARS = _DEFAULTS["max_system_chars"]
MAX_TOKENS_LIMIT = _DEFAULTS["max_tokens_limit"]
DEFAULT_MAX_TOKENS = _DEFAULTS["default_max_tokens"]
DEFAULT_TEMPERATURE = _DEFAULTS["default_temperature"]
DEFAULT_VOICE = _DEFAULTS["tts_voice"]

# Every stable problem `code` the API answers with, by HTTP status, and what it means.
PROBLEM_CODES: dict[int, dict[str, str]] = {
    400: {
        "malformed_json": "the body is not valid JSON or not a JSON object",
        "malformed_multipart": "the multipart body cannot be parsed",
        "conflicting_input": "both `text` and `audio` were sent",
        "missing_input": "neither `text` nor `audio` was sent",
        "bad_request": "the request cannot be read at all",
    },
    404: {
        "job_not_found": "no job has this id",
        "audio_not_found": "the job finished without a spoken reply (text reply, or it failed)",
        "not_found": "no route matches the path",
    },
    405: {"method_not_allowed": "the route does not take this method; see `Allow`"},
    409: {"job_not_finished": "the job is still queued or running"},
    413: {"payload_too_large": f"the body is over MAX_UPLOAD_MB (default {MAX_UPLOAD_MB} MB)"},
    415: {
        "unsupported_media_type": "the Content-Type is not one of the accepted forms",
        "unsupported_audio_format": "the audio bytes are not a WAV file, whatever the label",
    },
    422: {
        "invalid_option": "a field, option or query parameter is unknown, repeated, of the "
        "wrong type or out of range; `field` names it",
        "empty_text": "the text is blank",
        "text_too_long": f"the text is over MAX_TEXT_CHARS (default {MAX_TEXT_CHARS}) characters",
        "invalid_cursor": "the cursor was not made by this service",
        "invalid_audio": "the WAV is corrupt and cannot be decoded",
        "audio_truncated": "the WAV's data chunk declares more bytes than arrived",
        "empty_audio": "the WAV has no bytes or no samples",
        "audio_too_long": "the recording is over MAX_AUDIO_SECONDS "
        f"(default {MAX_AUDIO_SECONDS} s)",
        "unsupported_audio_encoding": "the WAV's sample encoding cannot be decoded",
    },
    500: {"internal_error": "an unexpected failure, logged under the request id"},
    503: {
        "broker_unavailable": "the job queue is unreachable; the job was recorded as failed, "
        "so submit again",
        "database_unavailable": "the database is unreachable; try again shortly",
    },
}
OTHER_HTTP_ERROR = {"http_error": "any other HTTP error, e.g. 416 for an unsatisfiable Range"}

# Codes a failed job may carry in its `error` (recorded by the worker, never sent as a problem).
JOB_ERROR_CODES = (
    "no_speech",
    "context_length_exceeded",
    "empty_reply",
    "engine_unavailable",
    "timeout",
    "worker_lost",
    "pipeline_error",
    "broker_unavailable",
    "internal_error",
)


def _ref(kind: str, name: str) -> Schema:
    """Returns a `$ref` to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str, **siblings: Any) -> Schema:
    """Returns a `$ref` to a component schema, with optional sibling keywords."""
    return {**_ref("schemas", name), **siblings}


def _nullable(type_name: str, description: str, **extra: Any) -> Schema:
    """Returns a schema of `type_name` or null, OpenAPI 3.1 style."""
    return {"type": [type_name, "null"], "description": description, **extra}


def _object(
    properties: dict[str, Schema],
    description: str,
    *,
    required: list[str] | None = None,
    closed: bool = False,
) -> Schema:
    """Returns an object schema; every property is required unless `required` says otherwise.

    Args:
        properties: The property schemas.
        description: What the object is.
        required: The properties always present; all of them when omitted.
        closed: Whether other properties are refused (request bodies).

    Returns:
        The schema.
    """
    schema: Schema = {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _bullets(meanings: dict[str, str]) -> str:
    """Renders codes and their meanings as a Markdown list."""
    return "\n".join(f"- `{code}`: {meaning}" for code, meaning in meanings.items())


def _code_table() -> str:
    """Renders every problem code, grouped by HTTP status."""
    groups = [f"**{status}**\n\n{_bullets(codes)}" for status, codes in PROBLEM_CODES.items()]
    groups.append(f"**other statuses**\n\n{_bullets(OTHER_HTTP_ERROR)}")
    return "Stable machine code to branch on, by status:\n\n" + "\n\n".join(groups)


def _json(schema: Schema, media_type: str = "application/json") -> dict[str, Schema]:
    """Returns a `content` map of one media type."""
    return {media_type: {"schema": schema}}


def _response(description: str, schema: Schema, **headers: Schema) -> Schema:
    """Returns a JSON response that, like every response, carries `X-Request-ID`."""
    return {
        "description": description,
        "headers": {"X-Request-ID": _ref("headers", "RequestId"), **headers},
        "content": _json(schema),
    }


def _problem(status: int, summary: str, *codes: str) -> Schema:
    """Returns a problem+json response limited to `codes`, each explained in the description."""
    meanings = {code: PROBLEM_CODES[status][code] for code in codes}
    narrowed = {"properties": {"status": {"const": status}, "code": {"enum": list(codes)}}}
    return {
        "description": f"{summary} `code` is one of:\n\n{_bullets(meanings)}",
        "headers": {"X-Request-ID": _ref("headers", "RequestId")},
        "content": _json({"allOf": [_schema("Problem"), narrowed]}, PROBLEM_JSON),
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    """Returns an optional query parameter."""
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _options(*, as_text: bool) -> dict[str, Schema]:
    """Returns the generation options; `as_text` spells numbers as form fields carry them."""
    if as_text:
        whole: Schema = {"type": "string", "pattern": r"^\s*[0-9]{1,9}\s*$"}
        number: Schema = {"type": "string"}
    else:
        whole = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_LIMIT}
        number = {"type": "number", "minimum": 0, "maximum": MAX_TEMPERATURE}
    return {
        "reply": _schema("ReplyFormat", description="How to answer; `text` when absent."),
        "system": {
            "type": "string",
            "maxLength": MAX_SYSTEM_CHARS,
            "description": "System prompt for the language model, trimmed; at most "
            f"MAX_SYSTEM_CHARS (default {MAX_SYSTEM_CHARS}) characters.",
        },
        "max_tokens": {
            **whole,
            "description": f"Longest reply in tokens, a whole number from 1 to MAX_TOKENS_LIMIT "
            f"(default {MAX_TOKENS_LIMIT}); when absent, DEFAULT_MAX_TOKENS "
            f"(default {DEFAULT_MAX_TOKENS}).",
        },
        "temperature": {
            **number,
            "description": f"Sampling temperature, a number from 0 to {MAX_TEMPERATURE:g}; when "
            f"absent, DEFAULT_TEMPERATURE (default {DEFAULT_TEMPERATURE}).",
        },
        "voice": {
            "type": "string",
            "description": "Voice of the spoken reply; one of the server's TTS_VOICES "
            f"(default only {DEFAULT_VOICE}). When absent, TTS_VOICE.",
            "examples": [DEFAULT_VOICE],
        },
    }


def _wav_body(description: str) -> Schema:
    """Returns the schema of a raw WAV file."""
    return {"type": "string", "format": "binary", "description": description}


TEXT_PROMPT = {
    "type": "string",
    "minLength": 1,
    "description": "The prompt. Trimmed, then it must be non-blank and at most MAX_TEXT_CHARS "
    f"(default {MAX_TEXT_CHARS}) characters.",
}
WAV_UPLOAD = (
    f"A WAV recording (PCM, float, A-law, mu-law or ADPCM samples) of at most MAX_AUDIO_SECONDS "
    f"(default {MAX_AUDIO_SECONDS} s); the format is decided by the bytes, not the label."
)

JSON_BODY = _object(
    {"text": TEXT_PROMPT, **_options(as_text=False)},
    "A text prompt. An explicit null option counts as absent. Media types of the form "
    "`application/*+json` are read the same way. Audio cannot travel in JSON.",
    required=["text"],
    closed=True,
)

MULTIPART_BODY = _object(
    {
        "audio": _wav_body(f"The recording, as a file part. {WAV_UPLOAD}"),
        "text": TEXT_PROMPT,
        **_options(as_text=True),
    },
    "Exactly one of the `audio` file part or the `text` field, plus options as text fields. "
    "Each field may appear once; no other file part is accepted.",
    required=[],
    closed=True,
)
MULTIPART_BODY["oneOf"] = [{"required": ["audio"]}, {"required": ["text"]}]

TEXT_FORM_BODY = _object(
    {"text": TEXT_PROMPT, **_options(as_text=True)},
    "A plain HTML form: the `text` field plus options as text fields.",
    required=["text"],
    closed=True,
)

CREATE_JOB = {
    "operationId": "create_job",
    "tags": ["jobs"],
    "summary": "Submit a prompt",
    "description": "Validates the prompt, stores it, queues it and answers at once. Poll the "
    "job at `Location` until its status is terminal (succeeded, failed or canceled).\n\n"
    "The generation options travel in the body for JSON and multipart, and as query "
    "parameters for a raw WAV body (where they are ignored otherwise). The whole body may be "
    f"at most MAX_UPLOAD_MB (default {MAX_UPLOAD_MB} MB).",
    "parameters": [
        _query(name, schema, "With a raw WAV body only. " + schema.get("description", ""))
        for name, schema in _options(as_text=False).items()
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JSON_BODY},
            "multipart/form-data": {
                "schema": MULTIPART_BODY,
                "encoding": {"audio": {"contentType": "audio/wav"}},
            },
            "application/x-www-form-urlencoded": {
                "schema": TEXT_FORM_BODY,
            },
            **{
                media_type: {"schema": _wav_body(f"The recording as the whole body. {WAV_UPLOAD}")}
                for media_type in WAV_MEDIA_TYPES
            },
        },
    },
    "responses": {
        "202": _response(
            "The job is queued.",
            _schema("Job"),
            Location={
                "description": "Path of the new job, `/v1/jobs/{job_id}`.",
                "schema": {"type": "string", "format": "uri-reference"},
            },
        ),
        "400": _problem(400, "The body cannot be read.", *PROBLEM_CODES[400]),
        "413": _problem(413, "The body is too large.", "payload_too_large"),
        "415": _problem(415, "The body's format is not accepted.", *PROBLEM_CODES[415]),
        "422": _problem(
            422,
            "A value in the body is unacceptable.",
            *(code for code in PROBLEM_CODES[422] if code != "invalid_cursor"),
        ),
        "500": _ref("responses", "InternalError"),
        "503": _problem(503, "A backing service is unreachable.", *PROBLEM_CODES[503]),
    },
}

LIST_JOBS = {
    "operationId": "list_jobs",
    "tags": ["jobs"],
    "summary": "List jobs",
    "description": "Jobs newest first, one page at a time. Pass `next_cursor` back as `cursor` "
    "(with the same `status`) for the next page. Any other query parameter is refused.",
    "parameters": [
        _query("status", _schema("JobStatus"), "Only jobs in this status."),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
            "Jobs per page.",
        ),
        _query("cursor", {"type": "string"}, "The `next_cursor` of the previous page (opaque)."),
    ],
    "responses": {
        "200": _response("One page of jobs.", _schema("JobList")),
        "422": _problem(
            422, "A query parameter is unacceptable.", "invalid_option", "invalid_cursor"
        ),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

GET_JOB = {
    "operationId": "get_job",
    "tags": ["jobs"],
    "summary": "Read a job",
    "parameters": [_ref("parameters", "JobId")],
    "responses": {
        "200": _response("The job's current state.", _schema("Job")),
        "404": _problem(404, "No such job.", "job_not_found"),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

WAV_REPLY = {"audio/wav": {"schema": _wav_body("16-bit PCM mono WAV.")}}
GET_JOB_AUDIO = {
    "operationId": "get_job_audio",
    "tags": ["jobs"],
    "summary": "Fetch the spoken reply",
    "description": "The reply of a succeeded `voice` job (also linked as `result.audio_url`). "
    "Served inline as `{job_id}.wav` with `ETag` and `Last-Modified`, cacheable for an hour; "
    "conditional and `Range` requests are honoured.",
    "parameters": [_ref("parameters", "JobId")],
    "responses": {
        "200": {
            "description": "The whole recording.",
            "headers": {"X-Request-ID": _ref("headers", "RequestId")},
            "content": WAV_REPLY,
        },
        "206": {
            "description": "The requested byte range of the recording.",
            "headers": {"X-Request-ID": _ref("headers", "RequestId")},
            "content": WAV_REPLY,
        },
        "304": {
            "description": "Not modified since the copy the client holds.",
            "headers": {"X-Request-ID": _ref("headers", "RequestId")},
        },
        "404": _problem(
            404, "No such job, or it has no spoken reply.", "job_not_found", "audio_not_found"
        ),
        "409": _problem(409, "The job has not finished yet.", "job_not_finished"),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

CHECK = _object(
    {
        "ok": {"type": "boolean"},
        "error": {"type": "string", "description": "The exception's class name, when not ok."},
    },
    "One dependency's check.",
    required=["ok"],
)

READINESS = _object(
    {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "checks": _object(
            {
                "database": CHECK,
                "broker": CHECK,
                "workers": _object(
                    {
                        "ok": {"type": "boolean", "description": "At least one worker is ready."},
                        "count": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Live workers with their models loaded.",
                        },
                        "details": {
                            "type": "array",
                            "description": "What each live worker reports of itself.",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "worker_id": {"type": "string"},
                                    "models_loaded": {"type": "boolean"},
                                },
                            },
                        },
                    },
                    "Workers that have published a heartbeat recently.",
                ),
            },
            "Each dependency's result.",
        ),
    },
    "Ready only when every check is ok.",
)

HEALTH_PATHS = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "tags": ["health"],
            "summary": "Liveness",
            "description": "The process is up; touches nothing else.",
            "responses": {
                "200": _response(
                    "Alive.",
                    _object({"status": {"type": "string", "const": "ok"}}, "Liveness."),
                ),
            },
        },
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "tags": ["health"],
            "summary": "Readiness",
            "description": "Ready when the database and broker answer and at least one worker "
            "has its models loaded.",
            "responses": {
                "200": _response("Ready.", _schema("Readiness")),
                "503": _response("Not ready; `checks` says why.", _schema("Readiness")),
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi_json",
            "tags": ["meta"],
            "summary": "This document",
            "responses": {
                "200": _response("The OpenAPI 3.1 description.", {"type": "object"}),
            },
        },
    },
}

TIMINGS = ("queued_s", "transcribe_s", "generate_s", "synthesize_s", "total_s")

SCHEMAS: dict[str, Schema] = {
    "JobStatus": {
        "type": "string",
        "enum": ["queued", "running", "succeeded", "failed", "canceled"],
        "description": "Where the job is; succeeded, failed and canceled are terminal.",
    },
    "ReplyFormat": {
        "type": "string",
        "enum": ["text", "voice"],
        "default": "text",
        "description": "`voice` also synthesizes the reply, fetched from `result.audio_url`.",
    },
    "Job": _object(
        {
            "id": {"type": "string", "description": "32 hex digits.", "pattern": "^[0-9a-f]{32}$"},
            "status": _schema("JobStatus"),
            "stage": _nullable(
                "string",
                "The pipeline stage the job is in, or null.",
                enum=["transcribing", "generating", "synthesizing", None],
            ),
            "reply": _schema("ReplyFormat"),
            "input": _schema("JobInput"),
            "result": {"oneOf": [{"type": "null"}, _schema("JobResult")]},
            "error": {"oneOf": [{"type": "null"}, _schema("JobError")]},
            "timings": _object(
                {
                    name: _nullable("number", "Seconds, or null until known.", minimum=0)
                    for name in TIMINGS
                },
                "How long each part took; `queued_s` is from creation to start, `total_s` from "
                "creation to finish.",
            ),
            "attempts": {"type": "integer", "minimum": 0, "description": "Runs started so far."},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _nullable("string", "When a worker began it.", format="date-time"),
            "finished_at": _nullable(
                "string", "When it reached a terminal status.", format="date-time"
            ),
        },
        "A submitted prompt and what the pipeline made of it. Times are UTC (`Z`).",
    ),
    "JobInput": {
        "description": "What was submitted.",
        "oneOf": [_schema("TextInput"), _schema("AudioInput")],
        "discriminator": {
            "propertyName": "kind",
            "mapping": {
                "text": _ref("schemas", "TextInput")["$ref"],
                "audio": _ref("schemas", "AudioInput")["$ref"],
            },
        },
    },
    "TextInput": _object(
        {"kind": {"type": "string", "const": "text"}, "text": {"type": "string"}},
        "A text prompt, as stored (trimmed).",
    ),
    "AudioInput": _object(
        {
            "kind": {"type": "string", "const": "audio"},
            "audio_seconds": {"type": "number", "minimum": 0, "description": "Recording length."},
        },
        "A recorded prompt.",
    ),
    "JobResult": _object(
        {
            "transcript": _nullable("string", "What was heard; null for a text prompt."),
            "text": {"type": "string", "description": "The reply."},
            "audio_url": _nullable(
                "string",
                "Path of the spoken reply, `/v1/jobs/{job_id}/audio`; null without one.",
                format="uri-reference",
            ),
            "audio_seconds": _nullable("number", "Length of the spoken reply.", minimum=0),
        },
        "The outcome; present only once the job succeeded.",
    ),
    "JobError": _object(
        {
            "code": {
                "type": "string",
                "description": "Stable machine code, e.g. "
                + ", ".join(f"`{code}`" for code in JOB_ERROR_CODES)
                + ".",
            },
            "message": {"type": "string", "description": "For a person."},
        },
        "Why the job failed; present only on a failed job.",
    ),
    "JobList": _object(
        {
            "data": {"type": "array", "items": _schema("Job")},
            "next_cursor": _nullable("string", "Cursor of the next page; null on the last."),
        },
        "One page of jobs, newest first.",
    ),
    "Readiness": READINESS,
    "Problem": _object(
        {
            "type": {"type": "string", "format": "uri", "description": "Names the `code`."},
            "title": {"type": "string", "description": "Short; the same for every occurrence."},
            "status": {"type": "integer", "description": "The HTTP status."},
            "detail": {"type": "string", "description": "What went wrong this time."},
            "code": {"type": "string", "description": _code_table()},
            "request_id": _nullable("string", "Also in the `X-Request-ID` header."),
            "field": {
                "type": "string",
                "description": "With `invalid_option`: the field, part or parameter at fault.",
            },
        },
        "An RFC 9457 problem with a stable machine `code`.",
        required=["type", "title", "status", "detail", "code", "request_id"],
    ),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Voice chat inference service",
        "version": "1.0.0",
        "description": "Submit a text or spoken prompt as a job, poll it, and read the reply as "
        "text or fetch it as speech. Every error is `application/problem+json`.",
    },
    "servers": [{"url": "/"}],
    "tags": [
        {"name": "jobs", "description": "Prompts and their replies."},
        {"name": "health", "description": "Probes for orchestrators."},
        {"name": "meta", "description": "About the API itself."},
    ],
    "paths": {
        "/v1/jobs": {"post": CREATE_JOB, "get": LIST_JOBS},
        "/v1/jobs/{job_id}": {"get": GET_JOB},
        "/v1/jobs/{job_id}/audio": {"get": GET_JOB_AUDIO},
        **HEALTH_PATHS,
    },
    "components": {
        "schemas": SCHEMAS,
        "parameters": {
            "JobId": {
                "name": "job_id",
                "in": "path",
                "required": True,
                "description": "The job's id, as returned on submission.",
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request's id: the client's `X-Request-ID` when it matches "
                "`^[A-Za-z0-9._-]{1,64}$`, otherwise a fresh one. Logged with the request.",
                "schema": {"type": "string"},
            },
        },
        "responses": {
            "InternalError": _problem(500, "An unexpected failure.", "internal_error"),
            "DatabaseUnavailable": _problem(
                503, "The database is unreachable.", "database_unavailable"
            ),
        },
    },
}


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """Returns the OpenAPI document."""
    return jsonify(OPENAPI)
