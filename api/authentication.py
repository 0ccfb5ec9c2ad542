"""Bearer API keys on every /v1 route, looked up by hash on each request (a revoked key is refused
at once); with none unrevoked the service runs open, for this machine only (api/gunicorn_conf.py
and scripts/launch.py refuse to start open on another address)."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request

from models.api_keys import KeyMode, find_caller, is_loopback
from models.errors import InvalidApiKey, MissingApiKey

_LOGGER = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1/"


def bearer_token() -> str | None:
    """The bearer token sent, "" for an Authorization header of another form, None for none."""
    sent = request.authorization
    if sent is None:  # no header, or one Werkzeug cannot parse
        return "" if "Authorization" in request.headers else None
    return (sent.token or "") if sent.type == "bearer" else ""


def from_this_machine() -> bool:
    """Whether the request comes straight from this machine: loopback, no proxy forwarded it."""
    forwarded = "Forwarded" in request.headers or "X-Forwarded-For" in request.headers
    return not forwarded and is_loopback(request.remote_addr or "")


def register_authentication(app: Flask) -> None:
    """Authenticates every /v1 request (but CORS preflights, which carry no credentials)."""
    engine = app.extensions["voicechat.reads"]
    mode = KeyMode(app.extensions["voicechat.sessions"])
    app.extensions["voicechat.key_mode"] = mode

    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith(PROTECTED_PREFIX) or request.method == "OPTIONS":
            return
        token = bearer_token()
        if token:
            caller = find_caller(engine, token)
            if caller is not None:
                g.api_key_id = caller.key_id
                # Read by api/limits.py.
                g.api_key_requests_per_minute = caller.requests_per_minute
                g.api_key_max_unfinished_jobs = caller.max_unfinished_jobs
                return
        # Open, a key sent anyway is ignored: OpenAI's SDKs always send one.
        if from_this_machine() and not mode.keyed():
            return
        g.auth_failure = "invalid_token" if token is not None else None
        _LOGGER.info(
            "request refused request_id=%s reason=%s",
            g.get("request_id"),
            "invalid_api_key" if token is not None else "missing_api_key",
        )
        # OpenAI's SDKs branch on `invalid_api_key` for any key problem, a missing one included.
        if token is not None or request.blueprint == "openai":
            raise InvalidApiKey("The API key is unknown or revoked.")
        raise MissingApiKey("Send an API key: `Authorization: Bearer <key>`.")

    @app.after_request
    def _challenge(response: Response) -> Response:
        # RFC 6750 §3: a 401 names the scheme, and why a token sent was refused.
        if response.status_code == 401:
            failure = g.get("auth_failure")
            error = f', error="{failure}"' if failure else ""
            response.headers["WWW-Authenticate"] = f'Bearer realm="voicechat"{error}'
        return response
