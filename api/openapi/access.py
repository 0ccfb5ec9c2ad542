"""The document's access rules: the bearer scheme, and the 401, 403 and 421 a guarded route
may answer (api/authentication.py, api/origins.py), added to every operation in one place."""

from __future__ import annotations

from api.openapi.common import Schema, openai_error, problem, ref
from api.origins import PROBES

OPENAI_TAG = "OpenAI-compatible"
SECURITY_SCHEMES: dict[str, Schema] = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with `flask --app api keys create --name NAME`, sent "
        "as `Authorization: Bearer <key>` on every /v1 route. While no key exists the service "
        "runs open, for requests from its own machine only, and any key sent is ignored.",
    }
}
# A key, or none when the service runs open.
SECURITY: list[Schema] = [{"ApiKey": []}, {}]
CHALLENGE = {
    "description": 'The scheme to authenticate with: `Bearer realm="voicechat"`, and '
    '`error="invalid_token"` when the key sent was refused (RFC 6750).',
    "schema": {"type": "string"},
}


def _problems(protected: bool) -> dict[str, Schema]:
    answers = {
        "403": problem(403, "The request comes from another site's page.", "origin_not_allowed"),
        "421": problem(421, "The request names another host.", "host_not_allowed"),
    }
    if protected:
        unauthorized = problem(401, "No usable API key.", "missing_api_key", "invalid_api_key")
        unauthorized["headers"]["WWW-Authenticate"] = CHALLENGE
        answers["401"] = unauthorized
    return answers


def _openai_errors() -> dict[str, Schema]:
    unauthorized = openai_error(
        401, "No usable API key (a missing one too).", {"invalid_api_key": "no usable key"}
    )
    unauthorized["headers"]["WWW-Authenticate"] = CHALLENGE
    return {
        "401": unauthorized,
        "403": openai_error(
            403, "The request comes from another site's page.", {"origin_not_allowed": "refused"}
        ),
        "421": openai_error(
            421, "The request names another host.", {"host_not_allowed": "see ALLOWED_HOSTS"}
        ),
    }


def guard(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Adds the access answers to each operation, and marks the unguarded ones as such."""
    for path, item in paths.items():
        for operation in item.values():
            protected = path.startswith("/v1/")
            if not protected:
                operation["security"] = []
            if path in PROBES:
                continue
            openai = OPENAI_TAG in operation.get("tags", [])
            extra = _openai_errors() if openai else _problems(protected)
            if protected:  # the key is looked up in the database (a route's own answers win)
                extra["500"] = ref("responses", "InternalError")
                extra["503"] = ref("responses", "DatabaseUnavailable")
            operation["responses"] = dict(sorted({**extra, **operation["responses"]}.items()))
    return paths
