"""The service's OpenAPI 3.1 description, built once at import and served at `GET /openapi.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, jsonify

from api.errors import PROBLEM_JSON
from api.events import BLOCK_SECONDS
from api.jobs import DEFAULT_PAGE, MAX_PAGE
from api.openai_compat import (
    CHAT_ROLES,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_SPEECH_CHARS,
    MAX_TRANSCRIPTION_PROMPT_CHARS,
    OPENAI_VOICES,
    SPEECH_FORMATS,
    TRANSCRIPTION_FORMATS,
    TTS_MODEL_IDS,
    WHISPER_MODEL_ID,
)
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
MAX_WAIT_SECONDS = _DEFAULTS["max_wait_seconds"]
EVENTS_TTL_SECONDS = _DEFAULTS["events_ttl_seconds"]
# The OpenAI-compatible routes hold the request for twice the hard limit (`_sync_wait`).
SYNC_WAIT_SECONDS = _DEFAULTS["task_time_limit"] * 2

# Every stable problem `code` the API answers with, by HTTP status, and what it means.
PROBLEM_CODES: dict[int, dict[str, str]] = {
    400: {
        "malformed_json": "the body is not valid JSON or not a JSON object",
        "malformed_multipart": "the multipart body cannot be parsed",
        "conflicting_input": "both `text` and `audio` were sent",
        "missing_input": "neither `text` nor `audio` was sent",
        "bad_request": "the request cannot be read at all",
        "invalid_header": "a request header is malformed: `Prefer: wait` is not a whole number "
        "of seconds, or `Last-Event-ID` (or `after`) is not an event id",
    },
    404: {
        "job_not_found": "no job has this id",
        "conversation_not_found": "no conversation has this id",
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
        "context_length_exceeded": "the system prompt and the prompt alone leave no room for "
        "the reply in the model's context window; reported only when the request waited for "
        "its job, which failed with this code",
    },
    500: {"internal_error": "an unexpected failure, logged under the request id"},
    503: {
        "broker_unavailable": "the job queue is unreachable; the job was recorded as failed, "
        "so submit again",
        "database_unavailable": "the database is unreachable; try again shortly",
    },
}
OTHER_HTTP_ERROR = {"http_error": "any other HTTP error, e.g. 416 for an unsatisfiable Range"}

# Codes a failed job may carry in its `error` (recorded by the worker), and what they mean.
JOB_ERROR_CODES: dict[str, str] = {
    "no_speech": "the recording holds no speech",
    "context_length_exceeded": "the prompt leaves no room for the reply in the model's context "
    "window",
    "empty_reply": "the model produced no reply",
    "engine_unavailable": "an engine or its model cannot be loaded",
    "timeout": "the job ran past TASK_SOFT_TIME_LIMIT or TASK_TIME_LIMIT",
    "worker_lost": "the job's worker was lost on every one of MAX_ATTEMPTS attempts",
    "pipeline_error": "the pipeline failed",
    "broker_unavailable": "the job could not be queued",
    "internal_error": "the worker failed on the job",
}

# Codes of the OpenAI-compatible routes' errors that are neither problem nor job codes.
OPENAI_ERROR_CODES: dict[str, str] = {
    "model_not_found": "`model` names no model of this service (see `GET /v1/models`); `param` "
    "is `model`",
    "wait_timeout": "the job did not finish within twice TASK_TIME_LIMIT (default "
    f"{SYNC_WAIT_SECONDS} s); it goes on, under `/v1/jobs/{{job_id}}`",
}
# The OpenAI-compatible routes answer a job that failed in the worker with its code, as a 500.
JOB_FAILURES = ("engine_unavailable", "timeout", "worker_lost", "pipeline_error", "internal_error")


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


def _headers(**headers: Schema) -> dict[str, Schema]:
    """Returns a response's headers: `X-Request-ID`, which every response carries, and `headers`."""
    return {"X-Request-ID": _ref("headers", "RequestId"), **headers}


def _response(description: str, schema: Schema, **headers: Schema) -> Schema:
    """Returns a JSON response that, like every response, carries `X-Request-ID`."""
    return {"description": description, "headers": _headers(**headers), "content": _json(schema)}


def _problem(status: int, summary: str, *codes: str) -> Schema:
    """Returns a problem+json response limited to `codes`, each explained in the description."""
    meanings = {code: PROBLEM_CODES[status][code] for code in codes}
    narrowed = {"properties": {"status": {"const": status}, "code": {"enum": list(codes)}}}
    return {
        "description": f"{summary} `code` is one of:\n\n{_bullets(meanings)}",
        "headers": _headers(),
        "content": _json({"allOf": [_schema("Problem"), narrowed]}, PROBLEM_JSON),
    }


def _openai_error(status: int, summary: str, meanings: dict[str | None, str]) -> Schema:
    """Returns an OpenAI-shaped error response limited to the codes in `meanings`.

    Args:
        status: The HTTP status.
        summary: When it happens.
        meanings: Each possible `code` and what it means; `None` for a plain HTTP error, whose
            `code` is null.

    Returns:
        The `application/json` response.
    """
    kind = "invalid_request_error" if status < 500 else "server_error"
    narrowed = {
        "properties": {
            "error": {"properties": {"type": {"const": kind}, "code": {"enum": list(meanings)}}}
        }
    }
    shown = {"null" if code is None else code: meaning for code, meaning in meanings.items()}
    return {
        "description": f"{summary} `error.code` is one of:\n\n{_bullets(shown)}",
        "headers": _headers(),
        "content": _json({"allOf": [_schema("OpenAIError"), narrowed]}),
    }


def _or_problem(response: Schema, status: int, *codes: str) -> Schema:
    """Adds to an OpenAI-shaped error response the problem+json that the app-wide handlers send
    for `codes` (an unreachable database, an unexpected failure): the route's own handlers see
    only domain and HTTP errors."""
    problem = _problem(
        status, "Or, from the app-wide handlers, `application/problem+json`:", *codes
    )
    return {
        **response,
        "description": f"{response['description']}\n\n{problem['description']}",
        "content": {**response["content"], **problem["content"]},
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    """Returns an optional query parameter."""
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _options(*, as_text: bool) -> dict[str, Schema]:
    """Returns the options a prompt may carry (OPTION_NAMES); `as_text` spells numbers as form
    fields carry them."""
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
        "conversation_id": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "Answer within this conversation (made by `POST /v1/conversations`): "
            "its system prompt (unless `system` is sent) and as many of its latest turns as fit "
            "the context window go with the prompt, and the prompt and reply join it once the "
            "job succeeds. 404 `conversation_not_found` when there is none.",
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

LOCATION_OF_JOB = {
    "description": "Path of the job, `/v1/jobs/{job_id}`.",
    "schema": {"type": "string", "format": "uri-reference"},
}
PREFERENCE_APPLIED = {
    "description": "With `Prefer: wait=N`: `wait=` and the seconds actually waited at most (N, "
    f"capped at MAX_WAIT_SECONDS, default {MAX_WAIT_SECONDS}).",
    "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
}

CREATE_JOB = {
    "operationId": "create_job",
    "tags": ["jobs"],
    "summary": "Submit a prompt",
    "description": "Validates the prompt, stores it, queues it and answers at once with 202. "
    "Poll the job at `Location`, or follow its `events_url`, until its status is terminal "
    "(succeeded, failed or canceled).\n\n"
    "With `Prefer: wait=N` (RFC 7240), the request is held up to N seconds: a job that ends by "
    "then is answered with 200 and its final state, one still going with 202 as usual.\n\n"
    "The options travel in the body for JSON and forms, and as query parameters for a raw WAV "
    "body (where they are ignored otherwise). The whole body may be at most MAX_UPLOAD_MB "
    f"(default {MAX_UPLOAD_MB} MB).",
    "parameters": [
        {
            "name": "Prefer",
            "in": "header",
            "description": "RFC 7240 preferences; only `wait=N` is read, N a whole number of "
            "seconds (at most six digits, optionally quoted), capped at MAX_WAIT_SECONDS "
            f"(default {MAX_WAIT_SECONDS}). Other preferences are ignored; a malformed `wait` "
            "is 400 `invalid_header`.",
            "schema": {"type": "string", "examples": ["wait=30"]},
        },
        *(
            _query(name, schema, "With a raw WAV body only. " + schema.get("description", ""))
            for name, schema in _options(as_text=False).items()
        ),
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
        "200": _response(
            "With `Prefer: wait`: the job ended within the wait (a job that failed with "
            "`context_length_exceeded` is answered with 422 instead).",
            _schema("Job"),
            Location=LOCATION_OF_JOB,
            **{"Preference-Applied": PREFERENCE_APPLIED},
        ),
        "202": _response(
            "The job is queued (or, with `Prefer: wait`, still going when the wait ran out).",
            _schema("Job"),
            Location=LOCATION_OF_JOB,
            **{"Preference-Applied": PREFERENCE_APPLIED},
        ),
        "400": _problem(
            400, "The body or the `Prefer` header cannot be read.", *PROBLEM_CODES[400]
        ),
        "404": _problem(404, "`conversation_id` names no conversation.", "conversation_not_found"),
        "413": _problem(413, "The body is too large.", "payload_too_large"),
        "415": _problem(415, "The body's format is not accepted.", *PROBLEM_CODES[415]),
        "422": _problem(
            422,
            "A value in the body is unacceptable, or (with `Prefer: wait`) the job failed because "
            "the prompt is too long for the model; `job_id` then names the failed job.",
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

EVENT_ID = {"type": "string", "pattern": "^(0|[0-9]{1,20}-[0-9]{1,20})$"}
SSE_HEADERS = {
    "Cache-Control": {"description": "Not to be cached.", "schema": {"const": "no-cache"}},
    "X-Accel-Buffering": {
        "description": "Tells nginx not to buffer the stream.",
        "schema": {"const": "no"},
    },
}


def _json_text(schema: Schema) -> Schema:
    """Returns the schema of an event's `data`: one line of JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _job_event(event: str, data: Schema, description: str) -> Schema:
    """Returns the schema of one kind of job event, as a parsed Server-Sent Event."""
    return {
        "type": "object",
        "description": description,
        "properties": {"event": {"const": event}, "id": EVENT_ID, "data": _json_text(data)},
        "required": ["event", "data"],
    }


JOB_TEXT = _object({"text": {"type": "string"}}, "A piece of text.")
JOB_EVENT = {
    "description": "Server-Sent Events; this schema describes each event (`event`, `id`, and "
    "`data`, one line of JSON), as OpenAPI 3.2's `itemSchema` does. The stream opens with "
    "`retry: 2000`, and a `: keep-alive` comment is sent after every "
    f"{BLOCK_SECONDS * 1.5:g} s of quiet.",
    "oneOf": [
        _job_event(
            "status",
            _object(
                {
                    "status": {"type": "string", "enum": ["running", "queued"]},
                    "attempt": {"type": "integer", "minimum": 1},
                },
                "The job's new status.",
                required=["status"],
            ),
            "A worker started the job (`running`, with the attempt), or a lost worker's job "
            "was queued again (`queued`; its events then start over).",
        ),
        _job_event(
            "stage",
            _object(
                {
                    "stage": {
                        "type": "string",
                        "enum": ["transcribing", "generating", "synthesizing"],
                    }
                },
                "The stage entered.",
            ),
            "The job entered a pipeline stage.",
        ),
        _job_event("transcript", JOB_TEXT, "What the recogniser heard."),
        _job_event("delta", JOB_TEXT, "The next piece of the reply, as the model produces it."),
        _job_event(
            "audio",
            _object({"seconds": {"type": "number", "minimum": 0}}, "The reply's length."),
            "The spoken reply is stored.",
        ),
        _job_event(
            "done",
            _schema("Job"),
            "The job, as `GET /v1/jobs/{job_id}` returns it; always the last event, after which "
            "the stream closes.",
        ),
    ],
}

GET_JOB_EVENTS = {
    "operationId": "get_job_events",
    "tags": ["jobs"],
    "summary": "Follow a job",
    "description": "Streams the job's events as they happen (also linked as `events_url`), "
    "from the first, or after the event named by `Last-Event-ID` (which a browser's "
    "`EventSource` sends when it reconnects) or `after`, until the final `done`. A finished "
    "job's stream replays what is kept and ends at once; events are kept EVENTS_TTL_SECONDS "
    f"(default {EVENTS_TTL_SECONDS} s) after the last one, and a `done` is made from the job "
    "when they are gone.",
    "parameters": [
        _ref("parameters", "JobId"),
        {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Resume after this event `id`; `0` replays from the start. Wins over "
            "`after`.",
            "schema": EVENT_ID,
        },
        _query("after", EVENT_ID, "Like `Last-Event-ID`, for clients that cannot set it."),
    ],
    "responses": {
        "200": {
            "description": "The event stream.",
            "headers": _headers(**SSE_HEADERS),
            "content": {"text/event-stream": {"schema": JOB_EVENT}},
        },
        "400": _problem(400, "`Last-Event-ID` or `after` is not an event id.", "invalid_header"),
        "404": _problem(404, "No such job.", "job_not_found"),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

CREATE_CONVERSATION = {
    "operationId": "create_conversation",
    "tags": ["conversations"],
    "summary": "Start a conversation",
    "description": "Starts an empty conversation; submit prompts to it with `conversation_id`. "
    "The body may be empty (with any Content-Type) for a conversation without a system prompt "
    "of its own.",
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": _object(
                    {
                        "system": {
                            "type": "string",
                            "maxLength": MAX_SYSTEM_CHARS,
                            "description": "System prompt of every job in the conversation "
                            "that does not send its own, trimmed; at most MAX_SYSTEM_CHARS "
                            f"(default {MAX_SYSTEM_CHARS}) characters. Null counts as absent.",
                        },
                    },
                    "The conversation's settings.",
                    required=[],
                    closed=True,
                ),
            },
        },
    },
    "responses": {
        "201": _response(
            "The conversation, without turns yet.",
            _schema("Conversation"),
            Location={
                "description": "Path of the conversation, `/v1/conversations/{conversation_id}`.",
                "schema": {"type": "string", "format": "uri-reference"},
            },
        ),
        "400": _problem(400, "The body is not a JSON object.", "malformed_json"),
        "413": _problem(413, "The body is too large.", "payload_too_large"),
        "415": _problem(
            415, "A body was sent that is not `application/json`.", "unsupported_media_type"
        ),
        "422": _problem(422, "A field is unknown or unacceptable.", "invalid_option"),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

GET_CONVERSATION = {
    "operationId": "get_conversation",
    "tags": ["conversations"],
    "summary": "Read a conversation",
    "parameters": [_ref("parameters", "ConversationId")],
    "responses": {
        "200": _response("The conversation and all its turns.", _schema("Conversation")),
        "404": _problem(404, "No such conversation.", "conversation_not_found"),
        "500": _ref("responses", "InternalError"),
        "503": _ref("responses", "DatabaseUnavailable"),
    },
}

# The errors every job-making OpenAI-compatible route shares.
OPENAI_404 = _openai_error(
    404, "No such model.", {"model_not_found": OPENAI_ERROR_CODES["model_not_found"]}
)
OPENAI_413 = _openai_error(
    413,
    "The body is too large.",
    {None: f"the body is over MAX_UPLOAD_MB (default {MAX_UPLOAD_MB} MB)"},
)
OPENAI_503 = _or_problem(
    _openai_error(
        503,
        "A backing service is unreachable.",
        {"broker_unavailable": PROBLEM_CODES[503]["broker_unavailable"]},
    ),
    503,
    "database_unavailable",
)
OPENAI_504 = _openai_error(
    504,
    "The job took too long to wait for.",
    {"wait_timeout": OPENAI_ERROR_CODES["wait_timeout"]},
)


def _openai_500(*job_codes: str) -> Schema:
    """Returns the 500 of a job-making OpenAI-compatible route: the job's own failure, or an
    unexpected failure of the request."""
    return _or_problem(
        _openai_error(
            500,
            "The job failed in the worker; the code is the job's `error.code`.",
            {code: JOB_ERROR_CODES[code] for code in job_codes},
        ),
        500,
        "internal_error",
    )


def _openai_problems(status: int, summary: str, *codes: str) -> Schema:
    """Returns an OpenAI-shaped error response for codes that are problem codes elsewhere."""
    return _openai_error(status, summary, {code: PROBLEM_CODES[status][code] for code in codes})


JOB_ID_HEADERS = _headers(**{"X-Job-Id": _ref("headers", "JobId")})

LIST_MODELS = {
    "operationId": "list_models",
    "tags": ["OpenAI-compatible"],
    "summary": "List models",
    "description": "The models this service answers with: the language model (its id is "
    "LLM_MODEL, else the file name of LLM_MODEL_PATH without extension, else "
    "`SmolLM2-135M-Instruct`), "
    f"`{WHISPER_MODEL_ID}` for transcription and "
    + ", ".join(f"`{i}`" for i in TTS_MODEL_IDS)
    + " for speech.",
    "responses": {"200": _response("The models.", _schema("ModelList"))},
}

CHAT_MESSAGE = _object(
    {
        "role": {
            "type": "string",
            "enum": list(CHAT_ROLES),
            "description": "`developer` counts as `system`.",
        },
        "content": {
            "oneOf": [
                {"type": "string", "maxLength": MAX_MESSAGE_CHARS},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"const": "text"},
                            "text": {"type": "string"},
                        },
                        "required": ["type"],
                    },
                },
            ],
            "description": f"At most {MAX_MESSAGE_CHARS} characters: a string, or text "
            "content parts, joined.",
        },
    },
    "One message; other members (e.g. `name`) are ignored.",
)

CHAT_COMPLETION_BODY = _object(
    {
        "model": {
            "type": "string",
            "description": "The language model's id, as listed by `GET /v1/models`.",
            "examples": ["SmolLM2-135M-Instruct"],
        },
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_MESSAGES,
            "items": CHAT_MESSAGE,
            "description": "The chat, oldest first; the last message must be the user's, and is "
            "the prompt: trimmed, non-blank and at most MAX_TEXT_CHARS "
            f"(default {MAX_TEXT_CHARS}) characters. The earlier ones that fit the context window "
            "go with it, system messages always.",
        },
        "max_completion_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TOKENS_LIMIT,
            "description": f"Longest reply in tokens, 1 to MAX_TOKENS_LIMIT (default "
            f"{MAX_TOKENS_LIMIT}); wins over `max_tokens`. When both are absent, "
            f"DEFAULT_MAX_TOKENS (default {DEFAULT_MAX_TOKENS}).",
        },
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TOKENS_LIMIT,
            "description": "The older name of `max_completion_tokens`.",
        },
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_TEMPERATURE,
            "description": f"Sampling temperature; when absent, DEFAULT_TEMPERATURE (default "
            f"{DEFAULT_TEMPERATURE}).",
        },
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "Answer with `text/event-stream` chunks as the reply is generated.",
        },
        "stream_options": _object(
            {"include_usage": {"type": "boolean", "default": False}},
            "With `stream` only: `include_usage` adds a last chunk with `usage` and no choices.",
            required=[],
            closed=True,
        ),
        "n": {"type": "integer", "const": 1, "description": "Only one choice is made."},
        "user": {"description": "Accepted and ignored."},
    },
    "A chat completion request. No system prompt is added; an explicit null counts as absent.",
    required=["model", "messages"],
    closed=True,
)

CHAT_EVENT = {
    "type": "object",
    "description": "With `stream: true`, Server-Sent Events; this schema describes each event, "
    "as OpenAPI 3.2's `itemSchema` does. Each `data` is a `ChatCompletionChunk`: first the "
    "assistant role, then a `delta.content` per piece of the reply, then an empty delta with "
    "`finish_reason`, then with `include_usage` one with `usage` and no choices. A job that "
    "fails sends an `OpenAIError` instead of the last chunks. The stream ends with "
    "`data: [DONE]`.",
    "properties": {
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": _json_text({"oneOf": [_schema("ChatCompletionChunk"), _schema("OpenAIError")]}),
        },
    },
    "required": ["data"],
}

CHAT_COMPLETIONS = {
    "operationId": "create_chat_completion",
    "tags": ["OpenAI-compatible"],
    "summary": "Chat completion",
    "description": "OpenAI's chat completion, as a job (`X-Job-Id`) the request waits for: whole, "
    "or streamed as it is generated.",
    "requestBody": {"required": True, "content": _json(CHAT_COMPLETION_BODY)},
    "responses": {
        "200": {
            "description": "The completion; a stream of chunks with `stream: true`.",
            "headers": {**JOB_ID_HEADERS, **SSE_HEADERS},
            "content": {
                **_json(_schema("ChatCompletion")),
                "text/event-stream": {"schema": CHAT_EVENT},
            },
        },
        "400": _openai_problems(400, "The body cannot be read.", "malformed_json"),
        "404": OPENAI_404,
        "413": OPENAI_413,
        "415": _openai_problems(
            415, "The body is not `application/json`.", "unsupported_media_type"
        ),
        "422": _openai_problems(
            422,
            "A parameter is unknown or unacceptable (`param` names it), or the job failed "
            "because the prompt is too long for the model.",
            "invalid_option",
            "empty_text",
            "text_too_long",
            "context_length_exceeded",
        ),
        "500": _openai_500("empty_reply", *JOB_FAILURES),
        "503": OPENAI_503,
        "504": OPENAI_504,
    },
}

TRANSCRIPTION_BODY = _object(
    {
        "file": _wav_body(f"The recording. {WAV_UPLOAD}"),
        "model": {"type": "string", "enum": [WHISPER_MODEL_ID]},
        "language": {
            "type": "string",
            "pattern": "^[A-Za-z]{2,3}$",
            "description": "The spoken language as an ISO-639 code such as `en`; when absent, "
            "WHISPER_LANGUAGE (default "
            f"{_DEFAULTS['whisper_language']}; `auto` detects it).",
        },
        "prompt": {
            "type": "string",
            "maxLength": MAX_TRANSCRIPTION_PROMPT_CHARS,
            "description": "Text to guide the recogniser (spellings, the previous sentence).",
        },
        "response_format": {
            "type": "string",
            "enum": list(TRANSCRIPTION_FORMATS),
            "default": "json",
        },
        "temperature": {
            "type": "string",
            "description": f"A number from 0 to {MAX_TEMPERATURE:g}; accepted for compatibility "
            "and unused (decoding is beam search).",
        },
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "const": "segment"},
            "description": "Only `segment`, which `verbose_json` always has.",
        },
    },
    "The recording as the `file` part, the rest as text fields, each at most once (but "
    "`timestamp_granularities[]`).",
    required=["file", "model"],
    closed=True,
)

TRANSCRIPTIONS = {
    "operationId": "create_transcription",
    "tags": ["OpenAI-compatible"],
    "summary": "Transcribe a recording",
    "description": "OpenAI's transcription, as a job (`X-Job-Id`) the request waits for. A "
    "recording without speech gives an empty transcript.",
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": TRANSCRIPTION_BODY,
                "encoding": {"file": {"contentType": "audio/wav"}},
            },
        },
    },
    "responses": {
        "200": {
            "description": "The transcript in `response_format`: `json` and `verbose_json` as "
            "JSON, `text` as plain text (with a final newline), `srt` and `vtt` as subtitles.",
            "headers": JOB_ID_HEADERS,
            "content": {
                **_json({"oneOf": [_schema("Transcription"), _schema("VerboseTranscription")]}),
                "text/plain": {"schema": {"type": "string"}},
                "application/x-subrip": {"schema": {"type": "string"}},
                "text/vtt": {"schema": {"type": "string"}},
            },
        },
        "400": _openai_problems(
            400,
            "The body cannot be read, or it has no single `file` part.",
            "malformed_multipart",
            "missing_input",
        ),
        "404": OPENAI_404,
        "413": OPENAI_413,
        "415": _openai_problems(
            415,
            "The body is not `multipart/form-data`, or the file is not a WAV.",
            *PROBLEM_CODES[415],
        ),
        "422": _openai_problems(
            422,
            "A field is unknown or unacceptable (`param` names it), or the WAV cannot be used.",
            "invalid_option",
            "invalid_audio",
            "audio_truncated",
            "empty_audio",
            "audio_too_long",
            "unsupported_audio_encoding",
        ),
        "500": _openai_500(*JOB_FAILURES),
        "503": OPENAI_503,
        "504": OPENAI_504,
    },
}

DEFAULT_SPEECH_FORMAT = "mp3" if "mp3" in SPEECH_FORMATS else "wav"
SPEECH_BODY = _object(
    {
        "model": {"type": "string", "enum": list(TTS_MODEL_IDS), "description": "Both the same."},
        "input": {
            "type": "string",
            "maxLength": MAX_SPEECH_CHARS,
            "description": "What to say: trimmed, non-blank and at most MAX_TEXT_CHARS (default "
            f"{MAX_TEXT_CHARS}) characters.",
        },
        "voice": {
            "type": "string",
            "description": "One of OpenAI's voices ("
            + ", ".join(sorted(OPENAI_VOICES))
            + "), each spoken with TTS_VOICE, or one of the server's TTS_VOICES (default only "
            f"{DEFAULT_VOICE}).",
            "examples": ["alloy", DEFAULT_VOICE],
        },
        "response_format": {
            "type": "string",
            "enum": list(SPEECH_FORMATS),
            "default": DEFAULT_SPEECH_FORMAT,
            "description": "`pcm` is 16-bit little-endian mono samples at 24 kHz without a "
            "header; `mp3` and `opus` only where libsndfile writes them.",
        },
        "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
    },
    "A speech request.",
    required=["model", "input", "voice"],
    closed=True,
)

SPEECH = {
    "operationId": "create_speech",
    "tags": ["OpenAI-compatible"],
    "summary": "Speak a text",
    "description": "OpenAI's text to speech, as a job (`X-Job-Id`) the request waits for.",
    "requestBody": {"required": True, "content": _json(SPEECH_BODY)},
    "responses": {
        "200": {
            "description": "The audio, in `response_format`.",
            "headers": JOB_ID_HEADERS,
            "content": {
                media_type: {
                    "schema": {"type": "string", "format": "binary", "description": f"`{name}`."}
                }
                for name, media_type in SPEECH_FORMATS.items()
            },
        },
        "400": _openai_problems(400, "The body cannot be read.", "malformed_json"),
        "404": OPENAI_404,
        "413": OPENAI_413,
        "415": _openai_problems(
            415, "The body is not `application/json`.", "unsupported_media_type"
        ),
        "422": _openai_problems(
            422,
            "A parameter is unknown or unacceptable (`param` names it).",
            "invalid_option",
            "empty_text",
            "text_too_long",
        ),
        "500": _openai_500(*JOB_FAILURES),
        "503": OPENAI_503,
        "504": OPENAI_504,
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
    "Operation": {
        "type": "string",
        "enum": ["chat", "transcribe", "speak"],
        "description": "What the pipeline does: `chat` answers the prompt (the jobs of "
        "`/v1/jobs` and `/v1/chat/completions`); `transcribe` and `speak` jobs come from the "
        "OpenAI-compatible audio routes.",
    },
    "Job": _object(
        {
            "id": {"type": "string", "description": "32 hex digits.", "pattern": "^[0-9a-f]{32}$"},
            "operation": _schema("Operation"),
            "conversation_id": _nullable(
                "string", "The conversation the job is part of, or null.", pattern="^[0-9a-f]{32}$"
            ),
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
            "events_url": {
                "type": "string",
                "format": "uri-reference",
                "description": "Path of the job's event stream, `/v1/jobs/{job_id}/events`.",
            },
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
            "text": {
                "type": "string",
                "description": "The reply; empty for `transcribe` and `speak` jobs.",
            },
            "audio_url": _nullable(
                "string",
                "Path of the spoken reply, `/v1/jobs/{job_id}/audio`; null without one.",
                format="uri-reference",
            ),
            "audio_seconds": _nullable("number", "Length of the spoken reply.", minimum=0),
            "language": _nullable(
                "string", "Language the recogniser heard, e.g. `en`; null for a text prompt."
            ),
            "finish_reason": _nullable(
                "string",
                "Why the model stopped: `stop` (it was done) or `length` (at `max_tokens`; a "
                "reply to `/v1/jobs` is then cut back to its last whole sentence); null without "
                "a reply from the model.",
            ),
            "usage": {
                "description": "Tokens the model read and wrote; null without a reply from it.",
                "oneOf": [{"type": "null"}, _schema("Usage")],
            },
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
    "Conversation": _object(
        {
            "id": {"type": "string", "description": "32 hex digits.", "pattern": "^[0-9a-f]{32}$"},
            "system": _nullable("string", "Its system prompt, or null for the default."),
            "created_at": {"type": "string", "format": "date-time"},
            "turns": {"type": "array", "items": _schema("Turn"), "description": "Oldest first."},
        },
        "A server-kept chat history. Times are UTC (`Z`).",
    ),
    "Turn": _object(
        {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {
                "type": "string",
                "description": "What was said; a spoken prompt as its transcript.",
            },
            "job_id": _nullable("string", "The job that added the turn."),
            "created_at": {"type": "string", "format": "date-time"},
        },
        "One message of a conversation, added when its job succeeded.",
    ),
    "Usage": _object(
        {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0, "description": "The sum."},
        },
        "Tokens the language model read (the prompt with its system prompt and history) and wrote.",
    ),
    "ModelList": _object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _schema("Model")},
        },
        "The models, in OpenAI's list shape.",
    ),
    "Model": _object(
        {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer", "description": "Unix time (fixed)."},
            "owned_by": {"const": "voicechat"},
        },
        "A model this service answers with.",
    ),
    "ChatCompletion": _object(
        {
            "id": {"type": "string", "pattern": "^chatcmpl-[0-9a-f]{32}$"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer", "description": "Unix time the job was made."},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": _object(
                    {
                        "index": {"const": 0},
                        "message": _object(
                            {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                                "refusal": {"type": "null"},
                            },
                            "The reply.",
                        ),
                        "logprobs": {"type": "null"},
                        "finish_reason": {
                            "type": "string",
                            "description": "`stop`, or `length` when cut at the token limit.",
                        },
                    },
                    "The one choice.",
                ),
            },
            "usage": _schema("Usage"),
            "system_fingerprint": {"type": "null"},
        },
        "A chat completion, in OpenAI's shape; `id` is `chatcmpl-` and the job id.",
    ),
    "ChatCompletionChunk": _object(
        {
            "id": {"type": "string", "pattern": "^chatcmpl-[0-9a-f]{32}$"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "maxItems": 1,
                "items": _object(
                    {
                        "index": {"const": 0},
                        "delta": _object(
                            {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                            "The next piece of the reply.",
                            required=[],
                        ),
                        "logprobs": {"type": "null"},
                        "finish_reason": _nullable("string", "Set on the last chunk only."),
                    },
                    "The one choice.",
                ),
                "description": "Empty on the usage chunk.",
            },
            "usage": _schema("Usage"),
        },
        "One event of a streamed chat completion (`text/event-stream`).",
        required=["id", "object", "created", "model", "choices"],
    ),
    "Transcription": _object(
        {"text": {"type": "string"}},
        "A transcript (`response_format` `json`).",
        closed=True,
    ),
    "VerboseTranscription": _object(
        {
            "task": {"const": "transcribe"},
            "language": _nullable("string", "The language heard, e.g. `en`."),
            "duration": {"type": "number", "minimum": 0, "description": "Seconds of audio."},
            "text": {"type": "string"},
            "segments": {
                "type": "array",
                "items": _object(
                    {
                        "id": {"type": "integer", "minimum": 0},
                        "start": {"type": "number", "description": "Seconds."},
                        "end": {"type": "number", "description": "Seconds."},
                        "text": {"type": "string"},
                    },
                    "A stretch of speech.",
                ),
            },
        },
        "A transcript with its segments (`response_format` `verbose_json`).",
    ),
    "OpenAIError": _object(
        {
            "error": _object(
                {
                    "message": {"type": "string", "description": "For a person."},
                    "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
                    "param": _nullable("string", "The parameter at fault, e.g. `messages`."),
                    "code": _nullable(
                        "string",
                        "Stable machine code (the same as the problem codes of the other "
                        "routes), or null for a plain HTTP error.",
                    ),
                },
                "What went wrong.",
            ),
        },
        "An error of the OpenAI-compatible routes, in OpenAI's shape.",
    ),
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
                "description": "With `invalid_option` and `conversation_not_found`: the field, "
                "part or parameter at fault.",
            },
            "job_id": {
                "type": "string",
                "description": "With `context_length_exceeded`: the job that failed.",
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
        "description": "Submit a text or spoken prompt as a job, poll or follow it, and read the "
        "reply as text or fetch it as speech; keep a conversation on the server; or use the "
        "OpenAI-compatible routes. Every error is `application/problem+json`, except on the "
        "OpenAI-compatible routes, which answer their own errors in OpenAI's shape.",
    },
    "servers": [{"url": "/"}],
    "tags": [
        {"name": "jobs", "description": "Prompts and their replies."},
        {"name": "conversations", "description": "Histories that prompts are answered within."},
        {
            "name": "OpenAI-compatible",
            "description": "OpenAI's API shapes over the same jobs, for the official SDKs with "
            '`base_url` pointed here. Errors are `application/json` `{"error": {message, '
            "type, param, code}}`, but for an unreachable database or an unexpected failure, "
            "which are problems as everywhere.",
        },
        {"name": "health", "description": "Probes for orchestrators."},
        {"name": "meta", "description": "About the API itself."},
    ],
    "paths": {
        "/v1/jobs": {"post": CREATE_JOB, "get": LIST_JOBS},
        "/v1/jobs/{job_id}": {"get": GET_JOB},
        "/v1/jobs/{job_id}/audio": {"get": GET_JOB_AUDIO},
        "/v1/jobs/{job_id}/events": {"get": GET_JOB_EVENTS},
        "/v1/conversations": {"post": CREATE_CONVERSATION},
        "/v1/conversations/{conversation_id}": {"get": GET_CONVERSATION},
        "/v1/models": {"get": LIST_MODELS},
        "/v1/chat/completions": {"post": CHAT_COMPLETIONS},
        "/v1/audio/transcriptions": {"post": TRANSCRIPTIONS},
        "/v1/audio/speech": {"post": SPEECH},
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
            "ConversationId": {
                "name": "conversation_id",
                "in": "path",
                "required": True,
                "description": "The conversation's id, as returned on creation.",
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request's id: the client's `X-Request-ID` when it matches "
                "`^[A-Za-z0-9._-]{1,64}$`, otherwise a fresh one. Logged with the request.",
                "schema": {"type": "string"},
            },
            "JobId": {
                "description": "The job the request became (see `/v1/jobs/{job_id}`).",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
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
