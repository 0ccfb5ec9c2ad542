"""Who may address the API from where: the Host and Origin checks, and CORS (flask-cors, which
only decides an answer's headers: refusing a request is no CORS library's job).

A host not in ALLOWED_HOSTS is refused (421): a DNS-rebinding page's requests carry its own
name. So is (403) an origin neither ours nor in CORS_ORIGINS, and without `Origin`, a cross-site
unsafe method: a form post needs no preflight, so in open mode any page could submit jobs. The
probes are left out: orchestrators reach them by address.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS

from models.errors import HostNotAllowed, OriginNotAllowed
from models.settings import Settings

PROBES = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, Prefer, X-Request-ID"
EXPOSE_HEADERS = (
    "Location, Preference-Applied, Retry-After, X-Job-Id, X-Request-ID, "
    "RateLimit, RateLimit-Policy, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)


def host_name(authority: str) -> str:
    """The host of a Host header or an origin, lower-case, without its port (`[::1]` keeps `[]`)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def host_allowed(authority: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names one of `allowed` (any port; `*` allows every host)."""
    return "*" in allowed or host_name(authority) in allowed


def origin_allowed(origin: str, own_authority: str, cors_origins: tuple[str, ...]) -> bool:
    """Whether a request's `Origin` is this service's own (the host and port it was sent to)
    or one of `cors_origins`. `null` (sandboxed frames, files) is never allowed."""
    origin = origin.strip().lower().rstrip("/")
    if origin in cors_origins:
        return True
    scheme, separator, authority = origin.partition("://")
    return bool(separator) and scheme in ("http", "https") and authority == own_authority.lower()


def register_origin_checks(app: Flask, settings: Settings) -> None:
    """Refuses requests for other hosts and from other origins, and answers CORS."""
    cors = settings.cors_origins

    @app.before_request
    def _check() -> Response | None:
        if request.path in PROBES:
            return None
        if not host_allowed(request.host, settings.allowed_hosts):
            raise HostNotAllowed(
                "This server does not answer for that host name; see ALLOWED_HOSTS."
            )
        origin = request.headers.get("Origin")
        if origin is None:
            cross_site = request.headers.get("Sec-Fetch-Site") == "cross-site"
            if cross_site and request.method not in SAFE_METHODS:
                raise OriginNotAllowed("Requests from other sites' pages are refused.")
            return None
        if not origin_allowed(origin, request.host, cors):
            raise OriginNotAllowed(
                "Requests from this page's origin are refused; see CORS_ORIGINS."
            )
        if request.method == "OPTIONS" and request.access_control_request_method:
            # A preflight, answered here; flask-cors adds its headers to the answer.
            return Response(status=204) if origin.lower().rstrip("/") in cors else None
        return None

    if not cors:
        return
    CORS(
        app,
        origins=list(cors),
        methods="GET, POST, DELETE, OPTIONS",
        allow_headers=ALLOW_HEADERS.split(", "),
        expose_headers=EXPOSE_HEADERS,
        max_age=600,
        always_send=False,  # else a request without `Origin` gets every allowed origin listed
        vary_header=False,  # set below, on every answer
        intercept_exceptions=False,  # error answers pass through after_request as well
    )

    @app.after_request
    def _vary(response: Response) -> Response:
        # flask-cors varies only when several origins are listed, but with one listed an answer
        # still differs by `Origin` (headers or none): a cache must not mix them up.
        response.vary.add("Origin")
        return response
