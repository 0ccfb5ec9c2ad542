"""`@documented`: what a view tells the OpenAPI document beyond its docstring, rule and shapes.

`{setting}` in any text is filled in with the running value when the document is built."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from models.errors import VoiceChatError

Schema = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])
ErrorClass = type[VoiceChatError]


@dataclass(frozen=True)
class Query:
    """The properties of a query shape's component, as optional query parameters."""

    shape: str
    note: str = ""


@dataclass(frozen=True)
class Route:
    """One view's declaration beyond its docstring (the summary line, then the description).

    Attributes:
        answers: Its non-error responses, by status.
        errors: The domain errors it raises (access checks and app-wide handlers add theirs).
        parameters: Header and query parameters (`Query` for a query shape's fields).
        body: The request body object.
        notes: Text put before an error status's code list, for what only this route says.
        facts: Values for `{name}` in the text, beside the settings'.
        security: The schemes that may authenticate a route outside `/v1` (or none).
    """

    answers: Mapping[int, Schema] = field(default_factory=dict)
    errors: tuple[ErrorClass, ...] = ()
    parameters: tuple[Schema | Query, ...] = ()
    body: Schema | None = None
    notes: Mapping[int, str] = field(default_factory=dict)
    facts: Mapping[str, object] = field(default_factory=dict)
    security: tuple[str, ...] = ()


def documented(answers: Mapping[int, Schema], **declared: Any) -> Callable[[View], View]:
    """Records a `Route` of `answers` and the `declared` fields on the view."""
    route = Route(answers, **declared)

    def record(view: View) -> View:
        setattr(view, "openapi_route", route)  # noqa: B010 (an attribute no type declares)
        return view

    return record


def ref(kind: str, name: str) -> Schema:
    """A `$ref` to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(name: str, **siblings: Any) -> Schema:
    """A `$ref` to a component schema, with sibling keywords."""
    return {**ref("schemas", name), **siblings}


def content(schema: Schema, media_type: str = "application/json") -> dict[str, Schema]:
    """A `content` map of one media type."""
    return {media_type: {"schema": schema}}


def answer(
    description: str,
    shape: str | None = None,
    body: Schema | None = None,
    headers: Schema | None = None,
) -> Schema:
    """A response: JSON of the component `shape`, or the `content` map `body`, or no body."""
    response: Schema = {"description": description}
    if headers:
        response["headers"] = headers
    if shape is not None:
        response["content"] = content(schema_ref(shape))
    elif body is not None:
        response["content"] = body
    return response


def json_body(shape: str, required: bool = True) -> Schema:
    """A request body of the JSON component `shape`."""
    return {"required": required, "content": content(schema_ref(shape))}


def header(name: str, description: str, schema: Schema, required: bool = False) -> Schema:
    """A header parameter."""
    parameter = {"name": name, "in": "header", "description": description, "schema": schema}
    return {**parameter, "required": True} if required else parameter


def family(error: ErrorClass) -> tuple[ErrorClass, ...]:
    """An error class and every class below it, parents first."""
    found: list[ErrorClass] = [error]
    for child in error.__subclasses__():
        found.extend(family(child))
    return tuple(found)


# A streamed answer's headers.
SSE_HEADERS = {
    "Cache-Control": {"description": "Not to be cached.", "schema": {"const": "no-cache"}},
    "X-Accel-Buffering": {
        "description": "Tells nginx not to buffer the stream.",
        "schema": {"const": "no"},
    },
}


def json_text(schema: Schema) -> Schema:
    """The schema of an event's `data`: one line of JSON matching `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}
