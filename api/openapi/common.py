"""What every path declaration shares: references, responses, problem and OpenAI error answers.

The error codes and their meanings are written here once, by HTTP status; each route's
declaration names the codes it can answer with.
"""

from __future__ import annotations

from typing import Any

from api.errors import PROBLEM_JSON

Schema = dict[str, Any]

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
        "invalid_idempotency_key": "`Idempotency-Key` is repeated, or not 1 to 255 printable "
        "ASCII characters",
    },
    401: {
        "missing_api_key": "API keys exist and the request sent none (`Authorization: Bearer "
        "<key>`), or the service runs open but the request is not from this machine",
        "invalid_api_key": "the key sent is unknown or revoked",
    },
    403: {
        "origin_not_allowed": "a browser request from a page of another origin than this "
        "service's or CORS_ORIGINS (`Origin`, or `Sec-Fetch-Site: cross-site` on a POST)",
    },
    404: {
        "job_not_found": "no job has this id (or it is another API key's)",
        "conversation_not_found": "no conversation has this id (or it is another API key's)",
        "audio_not_found": "the job finished without a spoken reply (text reply, or it failed)",
        "not_found": "no route matches the path",
    },
    405: {"method_not_allowed": "the route does not take this method; see `Allow`"},
    409: {
        "job_not_finished": "the job is still queued or running",
        "idempotency_key_in_flight": "the first request with this `Idempotency-Key` is still "
        "being handled; retry shortly",
        "job_finished": "the job already succeeded or failed: there is nothing to cancel",
    },
    410: {"audio_expired": "retention deleted the audio after AUDIO_TTL_SECONDS; the job is kept"},
    421: {"host_not_allowed": "the request's `Host` is not one of ALLOWED_HOSTS"},
    413: {"payload_too_large": "the body is over MAX_UPLOAD_MB"},
    415: {
        "unsupported_media_type": "the Content-Type is not one of the accepted forms",
        "unsupported_audio_format": "the audio bytes are not a WAV file, whatever the label",
    },
    422: {
        "invalid_option": "a field, option or query parameter is unknown, repeated, of the "
        "wrong type or out of range; `field` names it",
        "empty_text": "the text is blank",
        "text_too_long": "the text is over MAX_TEXT_CHARS characters",
        "messages_too_long": "a chat's messages hold over MAX_CHAT_CHARS characters in all",
        "invalid_cursor": "the cursor was not made by this service",
        "invalid_audio": "the WAV is corrupt and cannot be decoded",
        "audio_truncated": "the WAV's data chunk declares more bytes than arrived",
        "empty_audio": "the WAV has no bytes or no samples",
        "audio_too_long": "the recording is over MAX_AUDIO_SECONDS",
        "unsupported_audio_encoding": "the WAV's sample encoding cannot be decoded",
        "unsupported_audio_channels": "the WAV has more than MAX_AUDIO_CHANNELS channels",
        "unsupported_sample_rate": "the WAV's sample rate is outside MIN_AUDIO_SAMPLE_RATE to "
        "MAX_AUDIO_SAMPLE_RATE",
        "audio_too_many_chunks": "the WAV has more than 64 chunks before its samples",
        "context_length_exceeded": "the system prompt and the prompt alone leave no room for "
        "the reply in the model's context window; reported only when the request waited for "
        "its job, which failed with this code",
        "invalid_webhook_url": "`webhook` is not an http(s) URL with a host and without "
        "credentials, of at most 2048 characters, or its host does not resolve",
        "webhook_target_not_allowed": "`webhook`'s host resolves to a private, loopback, "
        "link-local, multicast, reserved or unspecified address (WEBHOOK_ALLOW_PRIVATE is off)",
        "webhook_secret_missing": "a webhook was asked for while the service runs without API "
        "keys and WEBHOOK_SECRET is unset",
        "idempotency_key_reused": "this `Idempotency-Key` came with a different request; use a "
        "new key",
    },
    429: {
        "rate_limited": "the caller's requests per minute (RATE_LIMIT_PER_MINUTE, or its key's "
        "own) are used up; try again after `Retry-After` seconds",
        "too_many_unfinished_jobs": "the caller has MAX_UNFINISHED_JOBS (or its key's own "
        "number) jobs queued or running; try again after `Retry-After` seconds",
    },
    500: {"internal_error": "an unexpected failure, logged under the request id"},
    503: {
        "broker_unavailable": "the job queue is unreachable; the job was recorded as failed, "
        "so submit again",
        "database_unavailable": "the database is unreachable; try again shortly",
        "server_busy": "the process already holds MAX_HELD_REQUESTS requests open (event "
        "streams, requests waiting for their job); try again after `Retry-After` seconds",
        "queue_full": "MAX_QUEUE_DEPTH jobs wait in the queue already; nothing was stored, try "
        "again after `Retry-After` seconds",
    },
    507: {"insufficient_storage": "the disk holding the service's files is full; nothing was kept"},
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
    "insufficient_storage": "the worker's disk was full: the spoken reply could not be stored",
    "internal_error": "the worker failed on the job",
    "canceled": "the job was canceled (its status is `canceled`, not `failed`)",
}


def ref(kind: str, name: str) -> Schema:
    """Returns a `$ref` to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(name: str, **siblings: Any) -> Schema:
    """Returns a `$ref` to a component schema, with optional sibling keywords."""
    return {**ref("schemas", name), **siblings}


def bullets(meanings: dict[str, str]) -> str:
    """Renders codes and their meanings as a Markdown list."""
    return "\n".join(f"- `{code}`: {meaning}" for code, meaning in meanings.items())


def code_table() -> str:
    """Renders every problem code, grouped by HTTP status."""
    groups = [f"**{status}**\n\n{bullets(codes)}" for status, codes in PROBLEM_CODES.items()]
    groups.append(f"**other statuses**\n\n{bullets(OTHER_HTTP_ERROR)}")
    return "Stable machine code to branch on, by status:\n\n" + "\n\n".join(groups)


def content(schema: Schema, media_type: str = "application/json") -> dict[str, Schema]:
    """Returns a `content` map of one media type."""
    return {media_type: {"schema": schema}}


def headers(**named: Schema) -> dict[str, Schema]:
    """Returns a response's headers: `X-Request-ID`, which every response carries, and `named`."""
    return {"X-Request-ID": ref("headers", "RequestId"), **named}


def response(description: str, schema: Schema, **named_headers: Schema) -> Schema:
    """Returns a JSON response that, like every response, carries `X-Request-ID`."""
    return {
        "description": description,
        "headers": headers(**named_headers),
        "content": content(schema),
    }


def retry_after(answer: Schema) -> Schema:
    """Adds the `Retry-After` header, sent with `server_busy`, to a 503 answer."""
    return {**answer, "headers": {**answer["headers"], "Retry-After": ref("headers", "RetryAfter")}}


def problem(status: int, summary: str, *codes: str) -> Schema:
    """Returns a problem+json response limited to `codes`, each explained in the description."""
    meanings = {code: PROBLEM_CODES[status][code] for code in codes}
    narrowed = {"properties": {"status": {"const": status}, "code": {"enum": list(codes)}}}
    return {
        "description": f"{summary} `code` is one of:\n\n{bullets(meanings)}",
        "headers": headers(),
        "content": content({"allOf": [schema_ref("Problem"), narrowed]}, PROBLEM_JSON),
    }


def openai_error(
    status: int, summary: str, meanings: dict[str | None, str], kind: str | None = None
) -> Schema:
    """Returns an OpenAI-shaped error response limited to the codes in `meanings`.

    Args:
        status: The HTTP status.
        summary: When it happens.
        meanings: Each possible `code` and what it means; `None` for a plain HTTP error, whose
            `code` is null.
        kind: The error's `type`; by default the request's fault below 500, else the server's.

    Returns:
        The `application/json` response.
    """
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    narrowed = {
        "properties": {
            "error": {"properties": {"type": {"const": kind}, "code": {"enum": list(meanings)}}}
        }
    }
    shown = {"null" if code is None else code: meaning for code, meaning in meanings.items()}
    return {
        "description": f"{summary} `error.code` is one of:\n\n{bullets(shown)}",
        "headers": headers(),
        "content": content({"allOf": [schema_ref("OpenAIError"), narrowed]}),
    }


def or_problem(answer: Schema, status: int, *codes: str) -> Schema:
    """Adds to an OpenAI-shaped error response the problem+json that the app-wide handlers send
    for `codes` (an unreachable database, an unexpected failure): the route's own handlers see
    only domain and HTTP errors."""
    alternative = problem(
        status, "Or, from the app-wide handlers, `application/problem+json`:", *codes
    )
    return {
        **answer,
        "description": f"{answer['description']}\n\n{alternative['description']}",
        "content": {**answer["content"], **alternative["content"]},
    }


def query_parameters(components: dict[str, Schema], name: str, note: str = "") -> list[Schema]:
    """The properties of a query shape's component as optional query parameters.

    Args:
        components: The generated component schemas.
        name: The component whose properties are the parameters.
        note: Text put before each parameter's own description.

    Returns:
        The parameter objects, in the shape's field order.
    """
    parameters = []
    for field, schema in components[name]["properties"].items():
        described = {k: v for k, v in schema.items() if k != "description"}
        text = f"{note} {schema.get('description', '')}".strip()
        parameter = {"name": field, "in": "query", "description": text, "schema": described}
        if described.get("type") == "array":  # one comma-separated value, never repeated
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    return parameters


def too_many(answer: Schema) -> Schema:
    """Adds `Retry-After` and the `RateLimit-*` headers to a 429 answer."""
    limit_headers = {
        name: ref("headers", name.replace("-", ""))
        for name in ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
    }
    return {**answer, "headers": {**answer["headers"], **limit_headers}}


# OpenAI's own name for the rate limit's code.
OPENAI_RATE_LIMITED: dict[str | None, str] = {
    "rate_limit_exceeded": "the caller's requests per minute (RATE_LIMIT_PER_MINUTE, or its "
    "key's own) are used up; try again after `Retry-After` seconds"
}


def with_rate_limits(paths: dict[str, Any]) -> dict[str, Any]:
    """Returns `paths` with the rate limit's 429 declared on every `/v1` operation that does not
    declare a 429 of its own."""
    limited: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith("/v1/"):
            limited[path] = item
            continue
        limited[path] = {}
        for method, operation in item.items():
            if "OpenAI-compatible" in operation.get("tags", ()):
                answer = openai_error(429, "Too many requests.", OPENAI_RATE_LIMITED, "requests")
            else:
                answer = problem(429, "Too many requests.", "rate_limited")
            responses = {**operation["responses"]}
            responses.setdefault("429", too_many(answer))
            limited[path][method] = {**operation, "responses": responses}
    return limited


COMMON_ERRORS = {
    "500": ref("responses", "InternalError"),
    "503": ref("responses", "DatabaseUnavailable"),
}
