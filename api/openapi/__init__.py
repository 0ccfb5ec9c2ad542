"""The service's OpenAPI 3.1 document, built from the app's routes, shapes and running settings.

Components come from the pydantic shapes; an operation from its view's docstring and rule and
its `@documented` declaration, its errors from the domain error classes. No library: flask-openapi3,
APIFlask and spectree take components once from static JSON Schema and own validation and error
answers, so the live limits, per-route problem codes, the four body forms of POST /v1/jobs and the
SSE streams would stay hand-written here anyway, as raw dicts.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from werkzeug.routing import Rule

from api import schemas
from api.openai import schemas as openai_schemas
from api.openapi.declare import Query, Route, Schema, answer, content, documented, ref
from api.openapi.problems import code_table, error_answers
from api.openapi.webhooks import WEBHOOKS
from api.request_validation import Shape, component_schemas, rewritten, without_null
from models import job_view
from models.errors import VoiceChatError
from models.job_view import Answer
from models.presets import llm_model_id
from models.settings import Settings

blueprint = Blueprint("openapi", __name__)

# Shapes read only from forms or query strings.
FORM_SHAPES = ("UploadJobRequest", "JobOptions", "JobListQuery", "TranscriptionRequest")
OPENAI_TAG = "OpenAI-compatible"
# A blueprint's tag, where it is not the blueprint's own name.
TAG_OF = {
    "events": "jobs",
    "openai": OPENAI_TAG,
    "metrics": "health",
    "openapi": "meta",
    "docs": "meta",
}
TAGS = [
    {"name": "jobs", "description": "Prompts and their replies."},
    {"name": "conversations", "description": "Histories that prompts are answered within."},
    {
        "name": OPENAI_TAG,
        "description": "OpenAI's API shapes over the same jobs, for the official SDKs with "
        '`base_url` pointed here. Errors are `application/json` `{"error": {message, '
        "type, param, code}}`, but for an unreachable database or an unexpected failure, "
        "which are problems as everywhere.",
    },
    {"name": "health", "description": "Probes for orchestrators, and metrics for Prometheus."},
    {"name": "meta", "description": "About the API itself."},
]
SECURITY_SCHEMES: dict[str, Schema] = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with `flask --app api keys create --name NAME`, sent "
        "as `Authorization: Bearer <key>` on every /v1 route. While no key exists the service "
        "runs open, for requests from its own machine only, and any key sent is ignored.",
    },
    "MetricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "METRICS_TOKEN, sent as `Authorization: Bearer <token>` to `/metrics` "
        "when it is set; unset, `/metrics` answers requests from the service's own machine "
        "with none.",
    },
}
NUMBER = {"type": "string", "pattern": "^[0-9]+$"}
HEADERS = {
    "RequestId": {
        "description": "The request's id: the client's `X-Request-ID` when it matches "
        "`^[A-Za-z0-9._-]{1,64}$`, otherwise a fresh one. Logged with the request.",
        "schema": {"type": "string"},
    },
    "RetryAfter": {"description": "The seconds to wait before trying again.", "schema": NUMBER},
    "RateLimitLimit": {
        "description": "The caller's requests per minute (draft-ietf-httpapi-ratelimit-headers); "
        "sent on every limited `/v1` answer.",
        "schema": NUMBER,
    },
    "RateLimitRemaining": {"description": "The requests left this minute.", "schema": NUMBER},
    "RateLimitReset": {
        "description": "The seconds until the current minute's count starts over.",
        "schema": NUMBER,
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
# Not the API: static files, and the page for people at `/` (api/page.py), which calls the API
# as any client does; a page is no operation.
NOT_THE_API = frozenset({"static", "page.index"})
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_ARGUMENT = re.compile(r"<(?:\w+:)?(\w+)>")
_PARAGRAPH = re.compile(r"\n\s*\n")


def build_document(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes, every bound and default as `settings` set it."""
    components = _components(settings)
    paths: dict[str, Any] = {}
    answered: list[type[VoiceChatError]] = []
    arguments: list[str] = []
    known = _setting_values(settings)
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_THE_API:
            continue
        view = app.view_functions[rule.endpoint]
        route: Route = getattr(view, "openapi_route", Route())
        values = {**known, **route.facts}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation, problems = _operation(rule, view, route, components)
            path = _ARGUMENT.sub(r"{\1}", rule.rule)
            paths.setdefault(path, {})[method.lower()] = _filled(operation, values)
            answered += problems
        arguments += [name for name in _ARGUMENT.findall(rule.rule) if name not in arguments]
    table = _fill(code_table(answered), known)
    components["Problem"]["properties"]["code"]["description"] = table
    parameters = {_camel(name): _path_parameter(name) for name in arguments}
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
        "security": [{"ApiKey": []}, {}],  # a key, or none when the service runs open
        "webhooks": WEBHOOKS,
        "paths": paths,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": components,
            "parameters": parameters,
            "headers": HEADERS,
        },
    }


def _components(settings: Settings) -> dict[str, Schema]:
    """The component schemas of every request and answer shape (each `Shape` and `Answer` of
    the shapes' modules), as `settings` bound them."""
    shapes: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for value in (
        *vars(schemas).values(),
        *vars(openai_schemas).values(),
        *vars(job_view).values(),
    ):
        if isinstance(value, type) and value not in (Shape, Answer):
            if issubclass(value, Shape):
                shapes.append((value, "validation"))
            elif issubclass(value, Answer):
                shapes.append((value, "serialization"))
    components = component_schemas(shapes, settings)
    # Forms and query strings carry no null: their shapes are documented without it.
    components["TextJobForm"] = without_null(components["TextJobRequest"])
    for name in FORM_SHAPES:
        components[name] = without_null(components[name])
    # The choices the validators read from the running settings, so the document is as strict.
    chat = components["ChatCompletionRequest"]["properties"]
    chat["model"]["enum"] = [llm_model_id(settings)]
    speech = components["SpeechRequest"]["properties"]
    speech["voice"]["enum"] = openai_schemas.speech_voices(settings)
    return components


def _operation(
    rule: Rule, view: Any, route: Route, components: dict[str, Schema]
) -> tuple[Schema, list[type[VoiceChatError]]]:
    """One operation of `rule`, from its view's docstring and declaration."""
    summary, _, description = inspect.cleandoc(view.__doc__ or "").partition("\n")
    blueprint_name, _, name = rule.endpoint.rpartition(".")
    tag = TAG_OF.get(blueprint_name, blueprint_name)
    openai = tag == OPENAI_TAG
    errors, problems = error_answers(rule.rule, route.errors, route.notes, openai)
    responses = {**errors, **copy.deepcopy(route.answers)}
    for response in responses.values():  # every response carries its request's id
        response["headers"] = {
            "X-Request-ID": ref("headers", "RequestId"),
            **response.get("headers", {}),
        }
    operation: Schema = {
        "operationId": name,
        "tags": [tag],
        "summary": summary.strip().rstrip("."),
        "description": "\n\n".join(" ".join(p.split()) for p in _PARAGRAPH.split(description)),
        "parameters": [
            *(ref("parameters", _camel(arg)) for arg in _ARGUMENT.findall(rule.rule)),
            *_parameters(route.parameters, components),
        ],
        "requestBody": copy.deepcopy(route.body),
        "responses": {str(status): responses[status] for status in sorted(responses)},
    }
    operation = {k: v for k, v in operation.items() if v}
    if not rule.rule.startswith("/v1/"):  # none, or its own schemes or none
        schemes: list[Schema] = [{name: []} for name in route.security]
        operation["security"] = [*schemes, {}] if schemes else []
    return operation, problems


def _parameters(
    declared: tuple[Schema | Query, ...], components: dict[str, Schema]
) -> list[Schema]:
    """The declared parameters, each query shape's fields as optional query parameters."""
    found: list[Schema] = []
    for parameter in declared:
        if not isinstance(parameter, Query):
            found.append(copy.deepcopy(parameter))
            continue
        for field, schema in components[parameter.shape]["properties"].items():
            described = {k: v for k, v in schema.items() if k != "description"}
            text = f"{parameter.note} {schema.get('description', '')}".strip()
            query = {"name": field, "in": "query", "description": text, "schema": described}
            if described.get("type") == "array":  # one comma-separated value, never repeated
                query.update(style="form", explode=False)
            found.append(query)
    return found


def _setting_values(settings: Settings) -> dict[str, object]:
    values = {**dict(settings), "max_upload_bytes": settings.max_upload_bytes}
    return {k: f"{v:g}" if isinstance(v, float) else v for k, v in values.items()}


def _filled(node: Any, values: dict[str, object]) -> Any:
    """`node` with `{name}` in its descriptions replaced by the value of that name, if any."""

    def fill(schema: dict[str, Any]) -> dict[str, Any]:
        if isinstance(schema.get("description"), str):
            schema["description"] = _fill(schema["description"], values)
        return schema

    return rewritten(node, fill)


def _fill(text: str, values: dict[str, object]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(values.get(m[1], m[0])), text)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _path_parameter(name: str) -> Schema:
    if not name.endswith("_id"):
        described, schema = f"The {name.replace('_', ' ')}.", {"type": "string"}
    else:  # a job's or a conversation's; any other string names none (404)
        described = f"The {name.removesuffix('_id')}'s id, as returned when it was made."
        schema = {"type": "string", "pattern": job_view.RESOURCE_ID}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": described,
        "schema": schema,
    }


@blueprint.get("/openapi.json")
@documented({200: answer("The OpenAPI 3.1 description.", body=content({"type": "object"}))})
def openapi_json() -> Response:
    """This document, as built for this app's settings."""
    return jsonify(current_app.extensions["voicechat.openapi"])
