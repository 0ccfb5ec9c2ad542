"""The one place where errors become HTTP: RFC 9457 problem+json with a stable machine `code`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json
from flask_limiter.errors import RateLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from api.limits import breach
from models import errors

_LOGGER = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Domain error → HTTP status; the most specific class in an error's MRO wins.
_STATUS: dict[type[errors.VoiceChatError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.JobNotFinished: 409,
    errors.IdempotencyKeyInFlight: 409,
    errors.JobFinished: 409,
    errors.JobCanceled: 409,
    errors.AudioExpired: 410,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    # RFC 9110 §15.5.20: this server does not answer for the authority the request names.
    errors.HostNotAllowed: 421,
    errors.InvalidInput: 422,
    errors.TooManyRequests: 429,
    # The pipeline's verdict, reported by a route that waited for it.
    errors.ContextLengthExceeded: 422,
    errors.ServiceUnavailable: 503,
    errors.InsufficientStorage: 507,
    errors.VoiceChatError: 500,
}

# Werkzeug's own rejections (routing, methods, body size) with codes of ours.
_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def status_for(error: errors.VoiceChatError | type[errors.VoiceChatError]) -> int:
    """The HTTP status of a domain error, or of its class."""
    cls = error if isinstance(error, type) else type(error)
    return next(_STATUS[base] for base in cls.__mro__ if base in _STATUS)


def with_retry_after(response: Response, error: errors.VoiceChatError) -> Response:
    """Adds `Retry-After` to the answer of an error that says when to come back."""
    if isinstance(error, (errors.ServerBusy, errors.TooManyRequests)):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem response: `title` never changes for a `code`, `detail` is this
    occurrence's, for a person; `extra` adds members (e.g. `field`)."""
    body: dict[str, Any] = {
        "type": f"https://voicechat.invalid/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": getattr(g, "request_id", None),
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def register_error_handlers(app: Flask) -> None:
    """Maps domain errors, Werkzeug's HTTP errors and anything unexpected to problems."""

    @app.errorhandler(errors.VoiceChatError)
    def _domain(error: errors.VoiceChatError) -> Response:
        answer = problem(status_for(error), error.code, error.title, error.detail, **error.extra)
        return with_retry_after(answer, error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        code, title = _HTTP_CODES.get(status, ("http_error", error.name))
        detail = error.description or title
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"The request body is larger than the limit of {limit} bytes."
        response = problem(status, code, title, detail)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(_error: RateLimitExceeded) -> Response:
        return _domain(breach())

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database(error: Exception) -> Response:
        _LOGGER.warning(
            "database unavailable request_id=%s error=%s",
            getattr(g, "request_id", None),
            type(error).__name__,
        )
        unavailable = errors.DatabaseUnavailable("The database is unreachable; try again shortly.")
        return _domain(unavailable)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # The trace goes to the log with the request id; the client gets neither trace nor text.
        _LOGGER.error(
            "unhandled error request_id=%s", getattr(g, "request_id", None), exc_info=error
        )
        return problem(500, "internal_error", "Internal error", "The server failed; it is logged.")
