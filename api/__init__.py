"""The Flask front end: validates uploads, writes job rows, enqueues by task name, reports."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from functools import cached_property
from random import getrandbits
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask.ctx import _AppCtxGlobals
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api import (
    conversations,
    docs,
    errors,
    follow,
    health,
    jobs,
    limits,
    openapi,
    page,
    prometheus,
)
from api.access import release_connection
from api.authentication import register_authentication
from api.held_requests import HeldRequests
from api.key_commands import keys
from api.openai import routes as openai_routes
from api.origins import register_origin_checks
from api.submission import ApiRequest
from models import storage
from models.db import PING_IDLE_SECONDS, GroupCommit, make_engine, make_session_factory
from models.event_log import JobEvents
from models.logging_config import REQUEST_ID
from models.queue import JobQueue
from models.settings import Settings

_LOGGER = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BLUEPRINTS = (
    jobs.blueprint,
    follow.blueprint,
    conversations.blueprint,
    openai_routes.blueprint,
    health.blueprint,
    prometheus.blueprint,
    openapi.blueprint,
    docs.blueprint,
    page.blueprint,
)


class _App(Flask):
    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Every view and hook here is synchronous: Flask's look at each, for each request (16
        hooks a request), is skipped."""
        return func


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Builds the web application (no model, no worker code); `config["settings"]` may hold
    ready `Settings` (else read from the environment), other keys go to `app.config`."""
    overrides = dict(config or {})
    settings: Settings = overrides.pop("settings", None) or Settings.from_env()
    app = _App(__name__)
    app.request_class = ApiRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # A text field may be as large as the body: the text limit is checked with its own 422.
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    app.config.update(overrides)
    _connect(app, settings)
    _track_requests(app)
    follow.register_turns(app, settings)
    prometheus.register_request_figures(app)
    # In this order: the Host and Origin checks, then the key (both after the request's session).
    register_origin_checks(app, settings)
    register_authentication(app)
    app.cli.add_command(keys)
    errors.register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # Last: its check runs after every other hook, once the caller is known.
    limits.init_limiter(app, settings)
    # Built now, from the settings this app runs with, so the document shows the live limits.
    app.extensions["voicechat.openapi"] = openapi.build_document(app, settings)
    return app


def warm_up(app: Flask) -> None:
    """Opens the app's connections now rather than on the first request; a service that
    cannot reach them yet connects on demand."""
    try:
        with app.extensions["voicechat.engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
        _open_stream_connections(app)
        app.extensions["voicechat.queue"].warm()
        app.extensions["voicechat.key_mode"].keyed()  # the first "any keys?" read, compiled
        # The rate limiter's first count loads its Lua script and opens its connection: a
        # counter no caller has, which expires in a second.
        app.extensions["voicechat.limiter"].storage.incr("voicechat/warm-up", 1)
    except (SQLAlchemyError, RedisError, OperationalError, OSError) as error:
        _LOGGER.warning("connections not warmed error=%s", type(error).__name__)


def _open_stream_connections(app: Flask) -> None:
    """Opens a connection for each held request now: the event streams' pool keeps each one it
    opens, so only a first crowd of followers would pay for them, one by one as they arrive (a
    tenth of a follower's start; `bench.followers --followers 300 --rate 0 --jobs 1`, paired
    runs: 268 and 300 answered within 1 s against 240 and 236)."""
    settings: Settings = app.extensions["voicechat.settings"]
    pool = app.extensions["voicechat.events"].redis.connection_pool
    opened = []
    try:
        for _ in range(max(settings.max_held_requests, 1)):
            opened.append(pool.get_connection())
    finally:  # Redis refusing one more (its maxclients): those opened stay the pool's to use
        for connection in opened:
            pool.release(connection)


def _connect(app: Flask, settings: Settings) -> None:
    """Makes the clients of the database, Redis, the queue and the file stores."""
    # Fifteen kept and five more: the pool closes a connection past the kept ones when it comes
    # back, and under a burst of followers' short reads SQLAlchemy's default (5 kept, 10 more)
    # opened and closed PostgreSQL connections without end (11% of the API's CPU, py-spy).
    engine = make_engine(
        settings.database_url, ping_idle_seconds=PING_IDLE_SECONDS, pool_size=15, max_overflow=5
    )
    app.extensions["voicechat.settings"] = settings
    app.extensions["voicechat.engine"] = engine
    # The same pool, for reads of one statement (a key, a job's state): no BEGIN before it and
    # no ROLLBACK after it, one round trip instead of three on PostgreSQL. SQLite's driver begins
    # nothing before a read, and resets an AUTOCOMMIT connection with a PRAGMA statement on its
    # return: it reads on the engine as it is.
    sqlite = engine.dialect.name == "sqlite"
    reads = engine if sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
    app.extensions["voicechat.reads"] = reads
    if sqlite:  # the new jobs' writer (api/limits.py)
        app.extensions["voicechat.group_commit"] = GroupCommit(engine)
    app.extensions["voicechat.sessions"] = make_session_factory(engine)
    app.extensions["voicechat.redis"] = Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    # Event streams are read with blocking XREADs: a socket timeout above the longest block, and
    # a connection for each held request beside 100 for short ones (redis-py's pool stops at 100
    # by default, and a follower past it would poll the row instead of blocking).
    events_redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=follow.BLOCK_SECONDS + 10,
        socket_connect_timeout=2,
        max_connections=settings.max_held_requests + 100,
        # Each arriving follower may open a connection: no CLIENT SETINFO round trips on it.
        driver_info=None,
    )
    app.extensions["voicechat.events"] = JobEvents(
        events_redis, ttl_seconds=settings.events_ttl_seconds
    )
    app.extensions["voicechat.queue"] = JobQueue(
        settings.redis_url, app.extensions["voicechat.redis"]
    )
    sessions = app.extensions["voicechat.sessions"]
    app.extensions["voicechat.uploads"] = storage.open_store(settings, storage.UPLOADS, sessions)
    app.extensions["voicechat.results"] = storage.open_store(settings, storage.RESULTS, sessions)
    app.extensions["voicechat.held"] = HeldRequests(settings.max_held_requests)


class _RequestGlobals(_AppCtxGlobals):
    """Flask's `g`, whose `db` is the request's database session, made on first use: a route
    that reads no database (the probes, the page) pays for none."""

    @cached_property
    def db(self) -> Session:
        session: Session = current_app.extensions["voicechat.sessions"]()
        return session


def _track_requests(app: Flask) -> None:
    """Gives each request an id (on every line it logs) and a database session (`g.db`)."""
    app.app_ctx_globals_class = _RequestGlobals

    @app.before_request
    def _open_request() -> None:
        g.request_started = time.perf_counter()  # the answer's time (api/prometheus.py)
        supplied = request.headers.get("X-Request-ID", "")
        # Unique, not secret: no system call for it, as uuid4 makes (profiled on /healthz).
        g.request_id = supplied if _REQUEST_ID.match(supplied) else f"{getrandbits(128):032x}"
        REQUEST_ID.set(g.request_id)

    @app.after_request
    def _tag_response(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if response.status_code == 204:  # no content, so no type (Flask gives every answer one)
            response.headers.pop("Content-Type", None)
        # The view is done with the database: a streamed body runs on after this, and must not
        # keep the connection the session checked out (the pool's 15 would go to followers).
        release_connection()
        return response

    @app.teardown_request
    def _close_request(_error: BaseException | None) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()
        REQUEST_ID.set(None)  # the thread's next lines belong to no request until its next
