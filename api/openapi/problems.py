"""An operation's error answers, from the domain errors that can reach it.

Each error's status is `api/errors.py`'s, its meaning its class docstring. A route's own errors,
the access checks' and the rate limit's come in its shape (problem+json, or OpenAI's error
object); the app-wide handlers' always as problem+json.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus

from api.errors import PROBLEM_JSON, status_for
from api.openai.schemas import OPENAI_CODES
from api.openapi.declare import ErrorClass, Schema, content, ref, schema_ref
from api.origins import PROBES
from models import errors

# Codes of no domain error: Werkzeug's own answers.
NOT_ALLOWED = ("method_not_allowed", "The route does not take this method; see `Allow`.")
HTTP_ERROR = ("http_error", "Any other HTTP error, e.g. 416 for an unsatisfiable Range.")
APP_WIDE = (errors.VoiceChatError, errors.DatabaseUnavailable)
CHALLENGE = {
    "description": 'The scheme to authenticate with: `Bearer realm="voicechat"`, and '
    '`error="invalid_token"` when the key sent was refused (RFC 6750).',
    "schema": {"type": "string"},
}
LIMIT_HEADERS = ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def meaning(error: ErrorClass) -> str:
    """What an error's code means: its own docstring, on one line."""
    text = error.__dict__.get("__doc__") or error.title
    return " ".join(text.split())


def _bullets(meanings: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"- `{code}`: {text}" for code, text in meanings)


def _by_status(found: Iterable[ErrorClass]) -> dict[int, list[ErrorClass]]:
    grouped: dict[int, list[ErrorClass]] = {}
    for error in found:
        same = grouped.setdefault(status_for(error), [])
        if error not in same:
            same.append(error)
    return grouped


def _headers(status: int, found: list[ErrorClass]) -> Schema:
    named: Schema = {}
    if any(issubclass(e, (errors.ServerBusy, errors.TooManyRequests)) for e in found):
        named["Retry-After"] = ref("headers", "RetryAfter")
    if status == 429:
        named.update({name: ref("headers", name.replace("-", "")) for name in LIMIT_HEADERS})
    if any(issubclass(e, errors.Unauthorized) for e in found):
        named["WWW-Authenticate"] = CHALLENGE
    return named


def _problem(status: int, found: list[ErrorClass]) -> tuple[str, Schema]:
    codes = [e.code for e in found]
    narrowed = {"properties": {"status": {"const": status}, "code": {"enum": codes}}}
    text = f"`code` is one of:\n\n{_bullets((e.code, meaning(e)) for e in found)}"
    return text, content({"allOf": [schema_ref("Problem"), narrowed]}, PROBLEM_JSON)


def _openai(status: int, found: list[ErrorClass]) -> tuple[str, Schema]:
    kind = "requests" if status == 429 else "invalid_request_error"
    kind = "server_error" if status >= 500 else kind
    # The body limit is Werkzeug's: the blueprint answers its HTTP error, which has no code.
    codes = [
        None if e is errors.PayloadTooLarge else OPENAI_CODES.get(e.code, e.code) for e in found
    ]
    inner = {"type": {"const": kind}, "code": {"enum": codes}}
    narrowed = {"properties": {"error": {"properties": inner}}}
    shown = (("null" if c is None else c, meaning(e)) for c, e in zip(codes, found, strict=True))
    text = f"`error.code` is one of:\n\n{_bullets(shown)}"
    return text, content({"allOf": [schema_ref("OpenAIError"), narrowed]})


def error_answers(
    path: str, declared: tuple[ErrorClass, ...], notes: Mapping[int, str], openai: bool
) -> tuple[dict[int, Schema], list[ErrorClass]]:
    """The error responses of the operation at `path` (which says which checks guard it), in
    OpenAI's shape or as problems, and the errors among them answered as problem+json."""
    shaped, app_wide = list(declared), list[ErrorClass]()
    if path.startswith("/v1/"):
        shaped += [] if openai else [errors.MissingApiKey]
        shaped += [errors.InvalidApiKey, errors.RateLimited]
        app_wide += APP_WIDE
    if path not in PROBES:
        shaped += [errors.OriginNotAllowed, errors.HostNotAllowed]
    if not openai:
        shaped, app_wide = [*shaped, *app_wide], []
    own, others = _by_status(shaped), _by_status(app_wide)
    answers: dict[int, Schema] = {}
    for status in sorted({*own, *others}):
        parts = []
        if status in own:
            parts.append(_openai(status, own[status]) if openai else _problem(status, own[status]))
        if status in others:
            text, body = _problem(status, others[status])
            lead = "Or, from" if parts else "From"
            parts.append(
                (f"{lead} the app-wide handlers, `application/problem+json`: {text}", body)
            )
        lead = " ".join((f"{HTTPStatus(status).phrase}.", notes.get(status, ""))).strip()
        answers[status] = {
            "description": f"{lead} " + "\n\n".join(text for text, _ in parts),
            "headers": _headers(status, [*own.get(status, []), *others.get(status, [])]),
            "content": {media: body for _, part in parts for media, body in part.items()},
        }
    return answers, ([] if openai else shaped) + list(app_wide)


def code_table(answered: Iterable[ErrorClass]) -> str:
    """Renders every problem code answered anywhere, grouped by HTTP status."""
    grouped = _by_status([*answered, errors.NotFound])
    meanings = {status: [(e.code, meaning(e)) for e in found] for status, found in grouped.items()}
    meanings.setdefault(405, []).append(NOT_ALLOWED)
    groups = [f"**{status}**\n\n{_bullets(meanings[status])}" for status in sorted(meanings)]
    groups.append(f"**other statuses**\n\n{_bullets([HTTP_ERROR])}")
    return "Stable machine code to branch on, by status:\n\n" + "\n\n".join(groups)
