"""The floor: the least code that keeps submit's promise, `bench.submit`'s baseline.

Per `POST /v1/jobs`: the Bearer key found by its SHA-256 (one indexed SELECT), counted against a
per-minute limit (one Redis pipeline, INCR and EXPIRE), the JSON validated (text and reply), the
job row inserted and committed, its id pushed on a Redis list, 202 with the id; and a bare
`GET /healthz`. Served by gunicorn with the API's workers, threads, keep-alive and timeout
(`api/gunicorn_conf.py`) and nothing else the service runs around a request (request id, Host
and Origin checks, metrics, the access log).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from flask import Flask, request
from pydantic import BaseModel, Field, ValidationError
from redis import Redis
from sqlalchemy import bindparam, insert, select

from harness.stack import add_key, free_port
from models.api_keys import hash_secret
from models.db import make_engine, write_turn
from models.tables import ApiKey, Job, new_job_id, utcnow

QUEUE = "floor:jobs"

_KEY = select(ApiKey.id, ApiKey.requests_per_minute).where(
    ApiKey.secret_hash == bindparam("secret_hash"), ApiKey.revoked_at.is_(None)
)


class Submission(BaseModel):
    """The submit body, as small as the service's text prompt."""

    text: str = Field(min_length=1)
    reply: Literal["text", "voice"] = "text"


def create_app() -> Flask:
    """The floor app on `DATABASE_URL` (migrated) and `REDIS_URL`."""
    app = Flask(__name__)
    # The service's engine and pool (api/__init__.py): SQLite in WAL, 15 connections and 5 more.
    engine = make_engine(os.environ["DATABASE_URL"], pool_size=15, max_overflow=5)
    redis = Redis.from_url(os.environ["REDIS_URL"])
    default_limit = int(os.environ.get("RATE_LIMIT_PER_MINUTE", "600"))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs")
    def submit() -> tuple[dict[str, Any], int]:
        token = request.authorization.token if request.authorization else None
        if not token:
            return {"code": "unauthorized"}, 401
        with engine.connect() as connection:
            key = connection.execute(_KEY, {"secret_hash": hash_secret(token)}).first()
        if key is None:
            return {"code": "unauthorized"}, 401
        counter = f"floor:limit:{key.id}:{int(time.time() // 60)}"
        count, _ = redis.pipeline().incr(counter).expire(counter, 60).execute()
        if count > (key.requests_per_minute or default_limit):
            return {"code": "rate_limited"}, 429
        try:
            body = Submission.model_validate_json(request.get_data())
        except ValidationError as error:
            return {"code": "invalid_request", "errors": error.errors(include_url=False)}, 422
        job_id = new_job_id()
        # The service's writer turn on SQLite (models/db.py): its threads queue, not busy-wait.
        with write_turn(engine), engine.begin() as connection:
            connection.execute(
                insert(Job).values(
                    id=job_id,
                    api_key_id=key.id,
                    reply_format=body.reply,
                    input_kind="text",
                    input_text=body.text,
                    options={},
                    created_at=utcnow(),
                )
            )
        redis.rpush(QUEUE, job_id)
        return {"id": job_id, "status": "queued"}, 202

    return app


@contextmanager
def running(database_url: str, redis_url: str, **env: str) -> Iterator[str]:
    """Serves the floor on a migrated `database_url` with a key of its own; yields its URL."""
    from api import gunicorn_conf as api
    from bench.service import serve

    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        f"--workers={api.workers}", f"--worker-class={api.worker_class_for(database_url)}",
        f"--threads={api.threads}", f"--worker-connections={api.worker_connections}",
        f"--keep-alive={api.keepalive}", f"--timeout={api.timeout}",
        "bench.floor:create_app()",
    ]  # fmt: skip
    environ = {**os.environ, **env, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    secret = add_key(database_url, "floor").secret
    url = f"http://127.0.0.1:{port}"
    with serve(command, environ, url, secret=secret, ready_path="/healthz"):
        yield url
