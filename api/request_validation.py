"""Validation from pydantic models (`Shape`): strict JSON, forms, and limits a deployment sets
(MAX_TEXT_CHARS, TTS_VOICES, ...) as `Live` annotations, read from the settings passed as the
validation context and by the OpenAPI document when the app is made, never frozen at import.

A rejection is one domain error, picked by a fixed field order (unknown fields first, then the
model's as declared), its message written from the field's documented schema: pydantic's own
text (which may quote the input) is never shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, ClassVar, TypeVar

from flask import request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import PydanticCustomError, core_schema
from werkzeug.datastructures import MultiDict

from models.errors import InvalidOption, MalformedJson, VoiceChatError, error_for_code
from models.settings import Settings

Schema = dict[str, Any]
ShapeT = TypeVar("ShapeT", bound="Shape")

REF_TEMPLATE = "#/components/schemas/{model}"
# Where a schema names a bound that the running settings decide: {keyword: setting name}.
LIVE_KEY = "x-live"


class Shape(BaseModel):
    """A request shape: unknown fields refused; JSON strict, forms converted from strings."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )

    # A shape may name domain errors for fields that are missing: {field: error class}.
    missing_errors: ClassVar[Mapping[str, type[VoiceChatError]]] = {}


@dataclass(frozen=True)
class Live:
    """JSON Schema's `keyword` (`maxLength`, `maximum`, `maxItems`, `enum` or `default`) set to
    a setting's running value; a value past it raises `error`."""

    keyword: str
    setting: str
    error: type[VoiceChatError] = InvalidOption

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Schema:
        result: Schema = handler(schema)
        target = handler.resolve_ref_schema(result)
        target.setdefault(LIVE_KEY, {})[self.keyword] = self.setting
        return result

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        if value is None or self.keyword == "default":
            return value
        bound = getattr(running_settings(info), self.setting)
        if self.keyword == "enum":
            too_far = value not in bound
        elif self.keyword in ("maxLength", "maxItems"):
            too_far = len(value) > bound
        else:  # maximum
            too_far = value > bound
        if too_far:
            raise PydanticCustomError(self.error.code, "")
        return value


def integral(value: Any) -> Any:
    """Takes JSON's 5.0 as the whole number 5; anything else passes on unchanged."""
    # JSON Schema counts 5.0 as an integer; JSON parsers hand it over as a float.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A whole number of at least 1: JSON's 5 or 5.0 (never "5" or true), or a form's "5". The bound
# sits inside the converter, so the document shows it as `minimum`.
PositiveWhole = Annotated[int, Field(ge=1), BeforeValidator(integral)]


def running_settings(info: ValidationInfo) -> Settings:
    """The settings a validation runs under (its context)."""
    settings = (info.context or {}).get("settings")
    assert isinstance(settings, Settings), "validate with context={'settings': ...}"
    return settings


def refuse(error: type[VoiceChatError], message: str = "") -> PydanticCustomError:
    """A validator's refusal that becomes `error` (with `message`, or one from the schema)."""
    return PydanticCustomError(error.code, message.replace("{", "{{").replace("}", "}}"))


class _DocumentSchema(GenerateJsonSchema):
    """JSON Schema without pydantic's generated field titles (the property name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def component_schemas(
    shapes: Iterable[tuple[type[BaseModel], JsonSchemaMode]], settings: Settings
) -> dict[str, Schema]:
    """The components of every shape, with live bounds taken from `settings`."""
    _, top = models_json_schema(
        list(shapes), ref_template=REF_TEMPLATE, schema_generator=_DocumentSchema
    )
    return {name: live(schema, settings) for name, schema in top["$defs"].items()}


def rewritten(schema: Any, rewrite: Callable[[dict[str, Any]], Any]) -> Any:
    """`schema` with `rewrite` applied to each object in it, innermost first."""
    if isinstance(schema, list):
        return [rewritten(item, rewrite) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return rewrite({k: rewritten(v, rewrite) for k, v in schema.items()})


def live(schema: Any, settings: Settings) -> Any:
    """Returns `schema` with each `x-live` marker replaced by the setting's current value."""

    def fill(node: dict[str, Any]) -> Any:
        for keyword, setting in node.pop(LIVE_KEY, {}).items():
            value = getattr(settings, setting)
            value = list(value) if isinstance(value, tuple) else value
            # On an optional value the bound belongs to the non-null branch: null stays allowed.
            branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
            for target in branches if branches and keyword != "default" else [node]:
                target[keyword] = value
        return node

    return rewritten(schema, fill)


def without_null(schema: Any) -> Any:
    """The schema as forms and query strings carry it: no null, an optional field is absent."""

    def drop_null(node: dict[str, Any]) -> Any:
        options = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
        if "anyOf" in node and len(options) == 1:
            del node["anyOf"]
            node = {**options[0], **node}
        if "default" in node and node["default"] is None:
            del node["default"]
        return node

    return rewritten(schema, drop_null)


@lru_cache(maxsize=64)
def _field_schemas(shape: type[BaseModel], settings: Settings) -> tuple[Schema, dict[str, Schema]]:
    schema = live(shape.model_json_schema(ref_template="#/$defs/{model}"), settings)
    return schema, schema.get("$defs", {})


def _schema_at(shape: type[BaseModel], settings: Settings, loc: tuple[Any, ...]) -> Schema:
    """The documented schema of the value at `loc`, following properties, items and refs."""
    schema, defs = _field_schemas(shape, settings)
    for step in loc:
        schema = _resolve(schema, defs)
        if isinstance(step, int):
            schema = schema.get("items", {})
        else:
            schema = schema.get("properties", {}).get(step, {})
    return _resolve(schema, defs)


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in schema:
        return _resolve(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        return _resolve({**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}, defs)
    return schema


def expectation(schema: Schema) -> str:
    """Says in words what a schema accepts: "a whole number from 1 to 1024"."""
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "one of " + ", ".join(str(v) for v in values)
    kind = schema.get("type")
    words = {
        "integer": "a whole number",
        "number": "a number",
        "boolean": "true or false",
        "array": "an array",
        "object": "an object",
    }.get(kind or "", "a string")
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"{words} from {_number(low)} to {_number(high)}"
    if "exclusiveMinimum" in schema and high is not None:
        return f"{words} over {_number(schema['exclusiveMinimum'])}, at most {_number(high)}"
    if kind == "string" and "maxLength" in schema:
        return f"{words} of at most {schema['maxLength']} characters"
    if kind == "array" and "maxItems" in schema:
        return f"{words} of 1 to {schema['maxItems']} items"
    return words


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def field_path(loc: tuple[Any, ...]) -> str:
    """`("messages", 0, "role")` → `messages[0].role`."""
    path = ""
    for step in loc:
        path += f"[{step}]" if isinstance(step, int) else (f".{step}" if path else str(step))
    return path


def domain_error(shape: type[BaseModel], error: ValidationError, settings: Settings) -> Exception:
    """The one domain error that answers a failed validation, by the fixed field order."""
    order = {name: index for index, name in enumerate(shape.model_fields)}

    def rank(item: Any) -> tuple[int, int, str]:
        loc = item["loc"]
        head = str(loc[0]) if loc else ""
        if item["type"] == "extra_forbidden":
            return (0, 0, head)
        return (1, order.get(head, len(order)), field_path(loc))

    first = min(error.errors(include_input=False, include_url=False), key=rank)
    loc, kind = tuple(first["loc"]), first["type"]
    path = field_path(loc) or None
    extra = {"field": path} if path else {}
    if kind == "extra_forbidden":
        names = (field.alias or name for name, field in shape.model_fields.items())
        return InvalidOption(f"Unknown field {path!r}; accepted: {', '.join(names)}.", field=path)
    if kind == "missing":
        missing: Mapping[str | None, type[VoiceChatError]] = getattr(shape, "missing_errors", {})
        return missing.get(path, InvalidOption)(f"{path} is required.", field=path)
    known = error_for_code(kind, "")
    if type(known) is not VoiceChatError:  # one of our own refusals
        message = str(first["msg"])
        if not message:
            message = _sentence(shape, settings, loc, path)
        elif message.startswith("must "):  # a refusal that names no field: "must not be blank"
            message = f"{path or 'The body'} {message}."
        return type(known)(message, **extra)
    return InvalidOption(_sentence(shape, settings, loc, path), **extra)


def _sentence(shape: type[BaseModel], settings: Settings, loc: tuple[Any, ...], path: Any) -> str:
    return f"{path or 'The body'} must be {expectation(_schema_at(shape, settings, loc))}."


def validate(
    shape: type[ShapeT], data: Any, settings: Settings, *, from_strings: bool = False
) -> ShapeT:
    """Validates parsed JSON (strictly) or form/query strings (`from_strings`) against `shape`."""
    try:
        # JSON takes the shape's own strictness (strict, but for enums written as strings).
        strict = False if from_strings else None
        context = {"settings": settings, "from_strings": from_strings}
        return shape.model_validate(data, strict=strict, context=context)
    except ValidationError as error:
        raise domain_error(shape, error, settings) from None


def validate_query(shape: type[ShapeT], settings: Settings) -> ShapeT:
    """Validates the request's query parameters against `shape`."""
    return validate(
        shape, single_values(request.args, "query parameter"), settings, from_strings=True
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parses a JSON body that must be an object (`MalformedJson` otherwise); NaN is not JSON."""

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def _whole_number(digits: str) -> int:
        if len(digits.lstrip("-")) > _MAX_DIGITS:  # else int() refuses it in Python's words
            raise MalformedJson("A number in the JSON body has too many digits.")
        return int(digits)

    try:
        payload = json.loads(body, parse_constant=_no_constants, parse_int=_whole_number)
    except RecursionError:
        raise MalformedJson("The JSON body nests too deeply.") from None
    except UnicodeDecodeError:
        raise MalformedJson("The body is not UTF-8 text.") from None
    except ValueError as error:
        raise MalformedJson(f"The body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise MalformedJson("The JSON body must be an object.")
    return payload


# Python's int() takes at most 4,300 digits (sys.get_int_max_str_digits()), a sign besides.
_MAX_DIGITS = 4300


def single_values(values: MultiDict[str, Any], kind: str) -> dict[str, Any]:
    """Form fields or query parameters as a dict, refusing any given more than once."""
    result: dict[str, Any] = {}
    for name in values:
        items = values.getlist(name)
        if len(items) != 1:
            raise InvalidOption(f"The {kind} {name!r} is given {len(items)} times.", field=name)
        result[name] = items[0]
    return result
