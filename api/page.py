"""The voice chat page at `/`: static (`api/static/chat/`, no build step, no CDN), talking to the
service only through `/v1` as any client does; no operation of the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

blueprint = Blueprint("page", __name__)

PAGE = "chat/index.html"
# Everything from this origin, nothing inline, no eval, and no HTML from strings (Trusted
# Types: the page builds its DOM with textContent). `blob:` media plays the reply's WAV.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",  # also the AudioWorklet module that records the microphone
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "media-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",  # the form is sent by script, never by the browser
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}
# The page and its assets: `static` is the application's own route to `api/static/`.
_SERVED = frozenset({"page.index", "static"})


@blueprint.get("/")
def index() -> Response:
    """The voice chat page."""
    response = current_app.send_static_file(PAGE)
    response.headers["Cache-Control"] = "no-cache"  # a new release's page at the next visit
    return response


@blueprint.after_app_request
def _protect(response: Response) -> Response:
    """Sends the page and its files with the headers that keep them to this origin."""
    if request.endpoint in _SERVED:
        response.headers.update(SECURITY_HEADERS)
    return response
