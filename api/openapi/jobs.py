"""Path declarations of the job and conversation routes: what their shapes cannot say."""

from __future__ import annotations

from typing import Any

from api.follow import BLOCK_SECONDS, EVENT_ID_PATTERN
from api.openapi.common import (
    COMMON_ERRORS,
    PROBLEM_CODES,
    Schema,
    headers,
    problem,
    query_parameters,
    ref,
    response,
    retry_after,
    schema_ref,
    too_many,
)
from api.submission import WAV_MEDIA_TYPES
from models.settings import Settings

WAV = {"type": "string", "format": "binary"}
EVENT_ID = {"type": "string", "pattern": EVENT_ID_PATTERN}
LOCATION = {"schema": {"type": "string", "format": "uri-reference"}}


def paths(settings: Settings, components: dict[str, Schema]) -> dict[str, Any]:
    """The job and conversation paths, with the limits of `settings`."""
    return {
        "/v1/jobs": {"post": _create_job(settings, components), "get": _list_jobs(components)},
        "/v1/jobs/{job_id}": {"get": GET_JOB, "delete": _cancel_job("delete_job")},
        "/v1/jobs/{job_id}/cancel": {"post": _cancel_job("cancel_job")},
        "/v1/jobs/{job_id}/audio": {"get": _job_audio(components)},
        "/v1/jobs/{job_id}/events": {"get": _job_events(settings)},
        "/v1/conversations": {"post": CREATE_CONVERSATION},
        "/v1/conversations/{conversation_id}": {"get": GET_CONVERSATION},
    }


def _signature_header(name: str, description: str, pattern: str) -> Schema:
    schema = {"type": "string", "pattern": pattern}
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": schema,
    }


WEBHOOKS = {
    "jobEvent": {
        "post": {
            "operationId": "job_event",
            "tags": ["jobs"],
            "summary": "A job's webhook event",
            "description": "Sent to a job's `webhook` for each of its `webhook_events`, from the "
            "maintenance worker, signed per Standard Webhooks (https://www.standardwebhooks.com)"
            ": verify `webhook-signature` before trusting the body (the README shows how), and "
            "drop a `webhook-id` already seen. Answer 2xx within WEBHOOK_TIMEOUT_SECONDS; "
            "anything else is retried with backoff.",
            "parameters": [
                _signature_header(
                    "webhook-id",
                    "`msg_{job_id}_{event}`: the same on every retry of one event.",
                    "^msg_[0-9a-f]{32}_(started|completed)$",
                ),
                _signature_header("webhook-timestamp", "Unix seconds of this attempt.", "^[0-9]+$"),
                _signature_header(
                    "webhook-signature",
                    "`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}."
                    "{body}`, keyed with the base64-decoded part of the secret after `whsec_`: "
                    "the API key's webhook secret, or WEBHOOK_SECRET when the service runs open.",
                    "^v1,[A-Za-z0-9+/=]+$",
                ),
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema_ref("WebhookEvent")}},
            },
            "responses": {"2XX": {"description": "Delivered; nothing more is sent for it."}},
        }
    }
}


def _job_answer(description: str, wait_cap: int) -> Schema:
    applied = {
        "description": "With `Prefer: wait=N`: `wait=` and the seconds waited at most (N, capped "
        f"at MAX_WAIT_SECONDS, here {wait_cap}).",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    }
    location = {"description": "Path of the job, `/v1/jobs/{job_id}`.", **LOCATION}
    return response(
        description,
        schema_ref("JobView"),
        Location=location,
        **{
            "Preference-Applied": applied,
            "Idempotent-Replayed": ref("headers", "IdempotentReplayed"),
        },
    )


CREATE_JOB_ERRORS = {
    "400": problem(400, "The body or the `Prefer` header cannot be read.", *PROBLEM_CODES[400]),
    "404": problem(404, "`conversation_id` names no conversation.", "conversation_not_found"),
    "413": problem(413, "The body is too large.", "payload_too_large"),
    "415": problem(415, "The body's format is not accepted.", *PROBLEM_CODES[415]),
    "422": problem(
        422,
        "A value in the body is unacceptable, or (with `Prefer: wait`) the job failed because the "
        "prompt is too long for the model; `job_id` then names the failed job.",
        *(c for c in PROBLEM_CODES[422] if c not in ("invalid_cursor", "messages_too_long")),
    ),
    "409": problem(
        409, "A request with the same `Idempotency-Key` is in flight.", "idempotency_key_in_flight"
    ),
    "429": too_many(
        problem(
            429,
            "The caller is over its requests per minute, or has its number of unfinished jobs.",
            *PROBLEM_CODES[429],
        )
    ),
    "500": ref("responses", "InternalError"),
    "503": retry_after(
        problem(
            503,
            "The queue is full (nothing was stored), or a backing service is unreachable.",
            "queue_full",
            "broker_unavailable",
            "database_unavailable",
        )
    ),
    "507": problem(507, "The recording cannot be stored: disk full.", "insufficient_storage"),
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "Makes retries safe (draft-ietf-httpapi-idempotency-key-header, as Stripe "
    "does): the same key with the same request (body form, prompt text or recording bytes, "
    "reply format, conversation and options; not `Prefer`) answers 202 with the job the first "
    "one made, as it is now, and `Idempotent-Replayed: true`; with another request, 422 "
    "`idempotency_key_reused`; while the first is still being handled, 409 "
    "`idempotency_key_in_flight`. Keys are per API key and kept IDEMPOTENCY_TTL_SECONDS; a "
    "submit refused with 429 or 503 gives its key back. 1 to 255 printable ASCII characters, "
    "bare or quoted.",
    # Bare keys only: the quoted form is accepted too, but no schema can say both.
    "schema": {"type": "string", "maxLength": 255, "pattern": "^[!#-~]([ -~]*[!-~])?$"},
}
CREATE_JOB_DESCRIPTION = (
    "Validates the prompt, stores it, queues it and answers at once with 202. Poll the job at "
    "`Location`, or follow its `events_url`, until its status is terminal (succeeded, failed or "
    "canceled).\n\nWith `Prefer: wait=N` (RFC 7240), the request is held up to N seconds: a job "
    "that ends by then is answered with 200 and its final state, one still going with 202 as "
    "usual.\n\nThe options travel in the body for JSON and forms, and as query parameters for a "
    "raw WAV body (where they are ignored otherwise). Media types of the form `application/*+json`"
    " are read as JSON. The whole body may be at most MAX_UPLOAD_MB ({upload_mb} MB here)."
    "\n\nWith `webhook`, the job's `webhook_events` (`started`, `completed`) are POSTed there "
    "as `WebhookEvent`s (see `webhooks` in this document), signed per Standard Webhooks with "
    "the headers `webhook-id` (the same on every retry of one event), `webhook-timestamp` and "
    "`webhook-signature`; a failed delivery (network error or an answer other than 2xx; "
    "redirects are not followed) is retried up to WEBHOOK_MAX_ATTEMPTS times, and each attempt "
    "is shown in the job's `webhook.deliveries`."
)


def _job_bodies(settings: Settings) -> Schema:
    wav = {
        **WAV,
        "description": "The recording as the whole body: a WAV of at most MAX_AUDIO_SECONDS "
        f"({settings.max_audio_seconds:g} s here).",
    }
    # A form carries the webhook's events as one comma-separated field, never repeated.
    events = {"webhook_events": {"style": "form", "explode": False}}
    return {
        "application/json": {"schema": schema_ref("TextJobRequest")},
        "multipart/form-data": {
            "schema": schema_ref("UploadJobRequest"),
            "encoding": {"audio": {"contentType": "audio/wav"}, **events},
        },
        "application/x-www-form-urlencoded": {
            "schema": schema_ref("TextJobForm"),
            "encoding": events,
        },
        **{media_type: {"schema": wav} for media_type in sorted(WAV_MEDIA_TYPES)},
    }


def _create_job(settings: Settings, components: dict[str, Schema]) -> Schema:
    prefer = {
        "name": "Prefer",
        "in": "header",
        "description": "RFC 7240 preferences; only `wait=N` is read, N a whole number of seconds "
        "(at most six digits, optionally quoted), capped at MAX_WAIT_SECONDS "
        f"({settings.max_wait_seconds} here). Other preferences are ignored; a malformed `wait` "
        "is 400 `invalid_header`.",
        "schema": {"type": "string", "pattern": '^wait="?[0-9]{1,6}"?$', "examples": ["wait=30"]},
    }
    ended = "With `Prefer: wait`: the job ended within the wait (a job that failed with "
    ended += "`context_length_exceeded` is answered with 422 instead)."
    queued = "The job is queued (or, with `Prefer: wait`, still going when the wait ran out; or "
    queued += "the wait was declined, without `Preference-Applied`, because the process already "
    queued += "holds MAX_HELD_REQUESTS requests open; or it is the job an earlier request with the "
    queued += "same `Idempotency-Key` made, as it is now)."
    return {
        "operationId": "create_job",
        "tags": ["jobs"],
        "summary": "Submit a prompt",
        "description": CREATE_JOB_DESCRIPTION.format(
            upload_mb=settings.max_upload_bytes // (1024 * 1024)
        ),
        "parameters": [
            prefer,
            IDEMPOTENCY_KEY,
            *query_parameters(components, "JobOptions", "With a raw WAV body only."),
        ],
        "requestBody": {"required": True, "content": _job_bodies(settings)},
        "responses": {
            "200": _job_answer(ended, settings.max_wait_seconds),
            "202": _job_answer(queued, settings.max_wait_seconds),
            **CREATE_JOB_ERRORS,
        },
    }


def _list_jobs(components: dict[str, Schema]) -> Schema:
    return {
        "operationId": "list_jobs",
        "tags": ["jobs"],
        "summary": "List jobs",
        "description": "Jobs newest first, one page at a time. Pass `next_cursor` back as "
        "`cursor` (with the same `status`) for the next page. Any other query parameter is "
        "refused.",
        "parameters": query_parameters(components, "JobListQuery"),
        "responses": {
            "200": response("One page of jobs.", schema_ref("JobList")),
            "422": problem(
                422, "A query parameter is unacceptable.", "invalid_option", "invalid_cursor"
            ),
            **COMMON_ERRORS,
        },
    }


GET_JOB = {
    "operationId": "get_job",
    "tags": ["jobs"],
    "summary": "Read a job",
    "parameters": [ref("parameters", "JobId")],
    "responses": {
        "200": response("The job's current state.", schema_ref("JobView")),
        "404": problem(404, "No such job.", "job_not_found"),
        **COMMON_ERRORS,
    },
}

CANCEL_JOB_DESCRIPTION = (
    "Cancels the job. A queued job ends `canceled` at once (200; its event stream ends with "
    "`done`, and no worker will run it). A running job is asked to stop (202 with the job as it "
    "is, still `running`): its worker stops at the next token, sentence or stage boundary and "
    "ends it `canceled` with `error.code` `canceled`, keeping in `result` the reply text made so "
    "far (no audio, and no turn in its conversation); its event stream ends with `done`. Asking "
    "again is harmless: a canceled job answers 200 as it is. A job that succeeded or failed "
    "answers 409 `job_finished`. `DELETE /v1/jobs/{job_id}` and `POST /v1/jobs/{job_id}/cancel` "
    "are the same operation."
)


def _cancel_job(operation_id: str) -> Schema:
    return {
        "operationId": operation_id,
        "tags": ["jobs"],
        "summary": "Cancel a job",
        "description": CANCEL_JOB_DESCRIPTION,
        "parameters": [ref("parameters", "JobId")],
        "responses": {
            "200": response("The job is canceled (now, or it was already).", schema_ref("JobView")),
            "202": response(
                "The job is running and its worker was asked to stop; follow it to its end.",
                schema_ref("JobView"),
            ),
            "404": problem(404, "No such job.", "job_not_found"),
            "409": problem(409, "The job already succeeded or failed.", "job_finished"),
            **COMMON_ERRORS,
        },
    }


AUDIO_REPLY = {
    "audio/wav": {"schema": {**WAV, "description": "16-bit PCM mono WAV."}},
    "audio/pcm": {"schema": {**WAV, "description": "The same samples, without a header."}},
}


def _job_audio(components: dict[str, Schema]) -> Schema:
    return {
        "operationId": "get_job_audio",
        "tags": ["jobs"],
        "summary": "Fetch or stream the spoken reply",
        "description": "The reply of a `voice` job (also linked as `result.audio_url`). Once the "
        "job succeeded: served inline as `{job_id}.wav` with `ETag` and `Last-Modified`, "
        "cacheable for an hour; conditional and `Range` requests are honoured. While it runs: "
        "streamed, each sentence as soon as the worker has spoken it (a WAV whose sizes say "
        "unknown, `0xFFFFFFFF`, as players expect of a stream), so playing can start after the "
        "first sentence; the stream ends with the reply, or early if the job fails or starts "
        "again on another attempt (ask again). A streaming answer holds a place of "
        "MAX_HELD_REQUESTS.",
        "parameters": [ref("parameters", "JobId"), *query_parameters(components, "AudioQuery")],
        "responses": {
            "200": {
                "description": "The whole recording, or the stream of it.",
                "headers": headers(),
                "content": AUDIO_REPLY,
            },
            "206": {
                "description": "The requested byte range of the stored recording.",
                "headers": headers(),
                "content": AUDIO_REPLY,
            },
            "304": {
                "description": "Not modified since the copy the client holds.",
                "headers": headers(),
            },
            "404": problem(
                404, "No such job, or it has no spoken reply.", "job_not_found", "audio_not_found"
            ),
            "409": problem(409, "A text-reply job has not finished yet.", "job_not_finished"),
            "410": problem(410, "The spoken reply was deleted by retention.", "audio_expired"),
            "422": problem(422, "A query parameter is unknown or unacceptable.", "invalid_option"),
            "500": ref("responses", "InternalError"),
            "503": retry_after(
                problem(
                    503,
                    "Every held-request place is taken (a stream), or the database is unreachable.",
                    "server_busy",
                    "database_unavailable",
                )
            ),
        },
    }


def _json_text(schema: Schema) -> Schema:
    """The schema of an event's `data`: one line of JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(event: str, data: Schema, description: str) -> Schema:
    """The schema of one kind of job event, as a parsed Server-Sent Event."""
    return {
        "type": "object",
        "description": description,
        "properties": {"event": {"const": event}, "id": EVENT_ID, "data": _json_text(data)},
        "required": ["event", "data"],
    }


def _data(properties: Schema, description: str, *required: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(required or properties),
    }


TEXT = _data({"text": {"type": "string"}}, "A piece of text.")
JOB_EVENT = {
    "oneOf": [
        _event(
            "status",
            _data(
                {
                    "status": {"type": "string", "enum": ["running", "queued"]},
                    "attempt": {"type": "integer", "minimum": 1},
                },
                "The job's new status.",
                "status",
            ),
            "A worker started the job (`running`, with the attempt), or an attempt whose worker "
            "was lost ended and the job is queued again (`queued`, with the lost attempt). The "
            "`queued` event always comes before the next attempt's first event, whose events then "
            "start over; nothing of the lost attempt follows it.",
        ),
        _event(
            "stage",
            _data({"stage": schema_ref("Stage")}, "The stage entered."),
            "The job entered a pipeline stage.",
        ),
        _event("transcript", TEXT, "What the recogniser heard."),
        _event("delta", TEXT, "The next piece of the reply, as the model produces it."),
        _event(
            "speech",
            _data(
                {
                    "index": {"type": "integer", "minimum": 0},
                    "attempt": {"type": "integer", "minimum": 1},
                    "text": {"type": "string"},
                    "seconds": {"type": "number", "minimum": 0},
                    "rate": {"type": "integer", "description": "Samples per second."},
                },
                "One sentence of the spoken reply: its place, its words, its length.",
            ),
            "A sentence of the spoken reply is synthesized, while the model may still be "
            "generating the next; `GET /v1/jobs/{job_id}/audio` streams it.",
        ),
        _event(
            "audio",
            _data({"seconds": {"type": "number", "minimum": 0}}, "The reply's length."),
            "The spoken reply is stored.",
        ),
        _event(
            "done",
            schema_ref("JobView"),
            "The job, as `GET /v1/jobs/{job_id}` returns it; once per job and always the last "
            "event, after which the stream closes.",
        ),
    ],
}


def _job_events(settings: Settings) -> Schema:
    stream = {
        "description": "Server-Sent Events; this schema describes each event (`event`, `id`, "
        "and `data`, one line of JSON), as OpenAPI 3.2's `itemSchema` does. The stream opens "
        "with `retry: 2000`, and a `: keep-alive` comment is sent after every "
        f"{BLOCK_SECONDS * 0.8:g} to {BLOCK_SECONDS:g} s of quiet.",
        **JOB_EVENT,
    }
    sse_headers = {
        "Cache-Control": {"description": "Not to be cached.", "schema": {"const": "no-cache"}},
        "X-Accel-Buffering": {
            "description": "Tells nginx not to buffer the stream.",
            "schema": {"const": "no"},
        },
    }
    return {
        "operationId": "get_job_events",
        "tags": ["jobs"],
        "summary": "Follow a job",
        "description": "Streams the job's events as they happen (also linked as `events_url`), "
        "from the first, or after the event named by `Last-Event-ID` (which a browser's "
        "`EventSource` sends when it reconnects) or `after`, until the final `done`. A finished "
        "job's stream replays what is kept and ends at once; events are kept EVENTS_TTL_SECONDS "
        f"({settings.events_ttl_seconds} s here) after the last one, and a `done` is made from "
        "the job when they are gone.",
        "parameters": [
            ref("parameters", "JobId"),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this event `id`; `0` replays from the start. Wins "
                "over `after`.",
                "schema": EVENT_ID,
            },
            {
                "name": "after",
                "in": "query",
                "description": "Like `Last-Event-ID`, for clients that cannot set it.",
                "schema": EVENT_ID,
            },
        ],
        "responses": {
            "200": {
                "description": "The event stream.",
                "headers": headers(**sse_headers),
                "content": {"text/event-stream": {"schema": stream}},
            },
            "204": {
                "description": "The event named by `Last-Event-ID` or `after` is the job's "
                "`done` or later: the stream has ended (a browser's `EventSource` does not "
                "reconnect after a 204)."
            },
            "400": problem(400, "`Last-Event-ID` or `after` is not an event id.", "invalid_header"),
            "404": problem(404, "No such job.", "job_not_found"),
            **COMMON_ERRORS,
            "503": retry_after(
                problem(
                    503,
                    "The process already holds MAX_HELD_REQUESTS requests open (checked before "
                    "the job is looked up), or the database is unreachable.",
                    "server_busy",
                    "database_unavailable",
                )
            ),
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
        "content": {"application/json": {"schema": schema_ref("ConversationRequest")}},
    },
    "responses": {
        "201": response(
            "The conversation, without turns yet.",
            schema_ref("ConversationView"),
            Location={
                "description": "Path of the conversation, `/v1/conversations/{conversation_id}`.",
                **LOCATION,
            },
        ),
        "400": problem(400, "The body is not a JSON object.", "malformed_json"),
        "413": problem(413, "The body is too large.", "payload_too_large"),
        "415": problem(
            415, "A body was sent that is not `application/json`.", "unsupported_media_type"
        ),
        "422": problem(422, "A field is unknown or unacceptable.", "invalid_option"),
        **COMMON_ERRORS,
    },
}

GET_CONVERSATION = {
    "operationId": "get_conversation",
    "tags": ["conversations"],
    "summary": "Read a conversation",
    "parameters": [ref("parameters", "ConversationId")],
    "responses": {
        "200": response("The conversation and all its turns.", schema_ref("ConversationView")),
        "404": problem(404, "No such conversation.", "conversation_not_found"),
        **COMMON_ERRORS,
    },
}
