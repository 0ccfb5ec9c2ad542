"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify
from flask.typing import ResponseReturnValue
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.openapi.declare import answer, documented
from api.origins import PROBES
from api.schemas import Liveness, Readiness
from models import heartbeat

blueprint = Blueprint("health", __name__)
# What a machine asks every few seconds: gunicorn writes no access line for them.
QUIET_PATHS = PROBES | {"/metrics"}


@blueprint.get("/healthz")
@documented({200: answer("Alive.", "Liveness")})
def healthz() -> Response:
    """Liveness.

    The process is up; touches nothing else.
    """
    return jsonify(_ALIVE)


_ALIVE = Liveness(status="ok").model_dump(mode="json")


@blueprint.get("/readyz")
@documented(
    {
        200: answer("Ready.", "Readiness"),
        503: answer("Not ready; `checks` says why.", "Readiness"),
    }
)
def readyz() -> ResponseReturnValue:
    """Readiness.

    Ready when the database and broker answer and at least one worker has its models loaded.
    """
    checks: dict[str, Any] = {}
    try:
        g.db.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except SQLAlchemyError as error:
        checks["database"] = {"ok": False, "error": type(error).__name__}
    redis: Redis = current_app.extensions["voicechat.redis"]
    workers: list[dict[str, Any]] = []
    try:
        redis.ping()
        checks["broker"] = {"ok": True}
        workers = heartbeat.live_workers(redis)
    except (RedisError, OSError) as error:
        checks["broker"] = {"ok": False, "error": type(error).__name__}
    ready_workers = heartbeat.ready(workers)
    checks["workers"] = {"ok": bool(ready_workers), "count": len(ready_workers), "details": workers}
    ready = all(check["ok"] for check in checks.values())
    readiness = Readiness.model_validate(
        {"status": "ready" if ready else "not_ready", "checks": checks}
    )
    return readiness.model_dump(mode="json"), 200 if ready else 503
