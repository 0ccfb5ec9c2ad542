"""Gunicorn settings for the API: `gunicorn -c python:api.gunicorn_conf 'api:create_app()'`."""

# ruff: noqa: E402 (gevent's patch comes before the imports it patches)

from __future__ import annotations

import os


def worker_class_for(database_url: str | None) -> str:
    """gevent on PostgreSQL: a request held open (an event stream, `Prefer: wait`, an OpenAI
    route) is a greenlet asleep in a Redis read, not a thread, so a crowd of followers costs no
    thread switching and no GIL convoy (bench.followers, 1,000 keyed at 250 a second, paired
    with gthread: every follower answered within 1 s against 731, the `/healthz` probes' p99
    116-271 ms against 1.4 s; docs/development.md). gthread on SQLite, whose lock wait
    (busy_timeout) sleeps in C, where it would stall every greenlet of the process."""
    return "gthread" if (database_url or "sqlite").startswith("sqlite") else "gevent"


worker_class = worker_class_for(os.environ.get("DATABASE_URL"))
if worker_class == "gevent":
    # First, in the master too: psycopg 3 waits cooperatively only if `select` is patched when
    # it is imported, which the imports below do.
    from gevent import monkey

    monkey.patch_all()

import logging
import sys
import threading
from typing import Any

from gunicorn import glogging

from api import warm_up
from api.health import QUIET_PATHS
from api.jobs import REQUEST_LINE_BYTES
from models import metrics
from models.api_keys import OPEN_NOTICE, check_bind_at
from models.logging_config import dict_config
from models.settings import Settings, parse_int

settings = Settings.from_env()  # gunicorn ignores a name that is none of its settings
bind = os.environ.get("API_BIND", "127.0.0.1:8000")
workers = parse_int("API_WORKERS", os.environ.get("API_WORKERS") or "2", minimum=1)
# gthread: MAX_HELD_REQUESTS threads for held requests (api/held_requests.py refuses one more),
# and API_THREADS that only short requests ever use: a probe never waits behind a follower.
threads = settings.max_held_requests + parse_int(
    "API_THREADS", os.environ.get("API_THREADS") or "16", minimum=1
)
# gevent: every connection is a greenlet, idle keep-alive ones too: gunicorn's default 1,000 for
# them, beside the held requests.
worker_connections = settings.max_held_requests + 1000
timeout = 60
# gunicorn's default, set from the constant that the document's 414 on POST /v1/jobs states.
limit_request_line = REQUEST_LINE_BYTES
graceful_timeout = 30
keepalive = 5
accesslog = "-"


class _AccessLog(glogging.Logger):  # type: ignore[misc]
    """Gunicorn's logger, with no access line for the probes, asked every few seconds: the line
    cost more than the route (profiled under wrk, against Flask answering /healthz)."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if environ.get("PATH_INFO") not in QUIET_PATHS:
            super().access(resp, req, environ, request_time)


logger_class = _AccessLog
errorlog = "-"
# The query string is left out of the access log: it may carry prompt text. The request's id
# comes from the answer's X-Request-ID (models/logging_config.py puts it on the line).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms %({x-request-id}o)s'
# gunicorn's own lines, the access log and the app's: one handler, JSON (LOG_FORMAT) or text.
logconfig_dict = dict_config(settings.log_format, os.environ.get("LOG_LEVEL", "INFO").upper())


def on_starting(server: Any) -> None:
    """Refuses to start open (no API key) on any address but loopback (Unix sockets and
    inherited descriptors count as local), before a socket is bound."""
    hosts = [address[0] for address in server.cfg.address if isinstance(address, tuple)]
    check = check_bind_at(settings.database_url, hosts)
    if check.refusal is not None:
        print(f"gunicorn: {check.refusal}", file=sys.stderr, flush=True)
        sys.exit(1)
    if check.runs_open:
        logging.getLogger("api.gunicorn_conf").warning(OPEN_NOTICE)


def post_worker_init(worker: Any) -> None:
    """Connects the process's clients before its first request (which paid tens of ms more),
    in a thread: a slow database must not hold up the boot (gunicorn kills a late worker)."""
    threading.Thread(target=warm_up, args=(worker.wsgi,), name="warm-up", daemon=True).start()


def child_exit(_server: Any, worker: Any) -> None:
    """Drops a finished worker's live gauges from the host's metrics (multiprocess mode)."""
    metrics.process_gone(worker.pid)
