"""The service's OpenAPI 3.1 document, built from the running settings when the app is made.

Components come from the pydantic shapes (`api/schemas.py`, `api/openai_schemas.py`); what no
model can say (paths, each route's problem codes, `Prefer: wait`, Range, the SSE events) is
declared beside them in `api/openapi/`.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from api import openai_schemas, schemas
from api.openapi import access, jobs, openai, service
from api.openapi.common import code_table, problem, with_rate_limits
from api.validation import component_schemas, without_null
from models.settings import Settings

blueprint = Blueprint("openapi", __name__)

# Shapes read only from forms or query strings.
FORM_SHAPES = ("UploadJobRequest", "JobOptions", "JobListQuery", "TranscriptionRequest")
TAGS = [
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
]


def build_document(settings: Settings) -> dict[str, Any]:
    """Builds the OpenAPI document with the limits of `settings`.

    Args:
        settings: The running settings; every bound and default they set is shown as set.

    Returns:
        The document, a JSON-ready dict.
    """
    requests = (*schemas.REQUESTS, *openai_schemas.REQUESTS)
    answers = (*schemas.ANSWERS, *openai_schemas.ANSWERS)
    shapes: list[tuple[type[BaseModel], JsonSchemaMode]] = [(s, "validation") for s in requests]
    shapes += [(shape, "serialization") for shape in answers]
    components = component_schemas(shapes, settings)
    components["Problem"]["properties"]["code"]["description"] = code_table()
    # Forms and query strings carry no null: their shapes are documented without it.
    components["TextJobForm"] = without_null(components["TextJobRequest"])
    for name in FORM_SHAPES:
        components[name] = without_null(components[name])
    # A copy: the declarations are module constants, and each app's document is its own.
    paths = with_rate_limits(
        access.guard(
            copy.deepcopy(
                {
                    **jobs.paths(settings, components),
                    **openai.paths(settings, components),
                    **service.PATHS,
                }
            )
        )
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Voice chat inference service",
            "version": "1.0.0",
            "description": "Submit a text or spoken prompt as a job, poll or follow it, and read "
            "the reply as text or fetch it as speech; keep a conversation on the server; or use "
            "the OpenAI-compatible routes. Every error is `application/problem+json`, except on "
            "the OpenAI-compatible routes, which answer their own errors in OpenAI's shape.",
        },
        "servers": [{"url": "/"}],
        "tags": TAGS,
        "security": access.SECURITY,
        "webhooks": jobs.WEBHOOKS,
        "paths": paths,
        "components": {
            "securitySchemes": access.SECURITY_SCHEMES,
            "schemas": components,
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "responses": {
                "InternalError": problem(500, "An unexpected failure.", "internal_error"),
                "DatabaseUnavailable": problem(
                    503, "The database is unreachable.", "database_unavailable"
                ),
            },
        },
    }


PARAMETERS = {
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
}

HEADERS = {
    "RequestId": {
        "description": "The request's id: the client's `X-Request-ID` when it matches "
        "`^[A-Za-z0-9._-]{1,64}$`, otherwise a fresh one. Logged with the request.",
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "With `server_busy`, `queue_full`, `rate_limited` and "
        "`too_many_unfinished_jobs`: the seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "RateLimitLimit": {
        "description": "The caller's requests per minute (draft-ietf-httpapi-ratelimit-headers); "
        "sent on every limited `/v1` answer.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "RateLimitRemaining": {
        "description": "The requests left in the current minute.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "RateLimitReset": {
        "description": "The seconds until the current minute's count starts over.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "IdempotentReplayed": {
        "description": "`true` when the answer is the job an earlier request with the same "
        "`Idempotency-Key` made.",
        "schema": {"const": "true"},
    },
    "JobId": {
        "description": "The job the request became (see `/v1/jobs/{job_id}`).",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
}


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """Returns the OpenAPI document, as built for this app's settings."""
    return jsonify(current_app.extensions["voicechat.openapi"])
