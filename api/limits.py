"""Each caller's share of the service: requests per minute (Flask-Limiter on the service's Redis),
unfinished jobs at once, and the queue's depth past which a submit is refused.

The caller is the API key (`api.access.caller_id`), or the remote address when the service runs
open. Only `/v1` routes are limited; the probes and `/openapi.json` never are.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from redis import Redis, RedisError
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from api.access import caller_id
from models.errors import QueueFull, RateLimited, TooManyUnfinishedJobs
from models.queue import waiting_jobs
from models.settings import Settings
from models.tables import ApiKey, Job, JobStatus

_LOGGER = logging.getLogger(__name__)

# How long a refused submit is told to wait: a job takes seconds, and the queue drains in tens.
UNFINISHED_RETRY_SECONDS = 5
QUEUE_FULL_RETRY_SECONDS = 10
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# The IETF draft's names (draft-ietf-httpapi-ratelimit-headers-06): the reset in seconds from now.
LIMIT_HEADER = "RateLimit-Limit"
REMAINING_HEADER = "RateLimit-Remaining"
RESET_HEADER = "RateLimit-Reset"
# Built once, and run as Core statements on the session's connection: building and running
# them through the ORM on every submit cost more than the queries themselves (profiled).
_JOBS, _KEYS = Job.__table__.c, ApiKey.__table__.c
_KEY_QUOTA = (
    select(_KEYS.max_unfinished_jobs).where(_KEYS.id == bindparam("owner")).with_for_update()
)
# Counted only up to the limit (a LIMIT in a subquery): whether the caller is at its limit is all
# a submit needs, and a count of every unfinished job grows with the queue (2 ms at 5,800 queued
# on PostgreSQL, profiled), while this one stops at the limit's number of index entries.
_OPEN_UNFINISHED, _OWN_UNFINISHED = (
    select(func.count()).select_from(
        select(_JOBS.id)
        .where(whose, _JOBS.status.in_(UNFINISHED))
        .limit(bindparam("allowed"))
        .subquery()
    )
    for whose in (_JOBS.api_key_id.is_(None), _JOBS.api_key_id == bindparam("owner"))
)


def rate_key() -> str:
    """Whose requests are counted together: the API key's, else the remote address's."""
    key_id = caller_id()
    return f"key:{key_id}" if key_id is not None else f"addr:{request.remote_addr or ''}"


def requests_per_minute() -> int:
    """The caller's requests per minute (its key's, else RATE_LIMIT_PER_MINUTE; 0 is none)."""
    if "requests_per_minute" not in g:
        settings: Settings = current_app.extensions["voicechat.settings"]
        own = g.get("api_key_requests_per_minute")
        g.requests_per_minute = settings.rate_limit_per_minute if own is None else own
    per_minute: int = g.requests_per_minute
    return per_minute


def _limit() -> str:
    return f"{max(requests_per_minute(), 1)} per minute"


def _exempt() -> bool:
    return not request.path.startswith("/v1/") or requests_per_minute() == 0


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    """Counts each caller's `/v1` requests per fixed minute on the service's Redis.

    With Redis unreachable the counts fall back to each process's memory (so a caller may get
    one limit per API process), and a failure of the limiter itself is logged, never a 500. Call
    it after authentication has been added: hooks run in the order they were added.
    """
    limiter = Limiter(
        key_func=rate_key,
        application_limits=[_limit],
        application_limits_exempt_when=_exempt,
        storage_uri=settings.redis_url,
        storage_options={"socket_timeout": 2, "socket_connect_timeout": 2},
        # One counter per caller and minute: one INCR a request, and an exact reset time.
        strategy="fixed-window",
        headers_enabled=False,  # its Reset is a timestamp and its Retry-After on every answer
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        key_prefix="voicechat",
    )
    limiter.init_app(app)
    app.extensions["voicechat.limiter"] = limiter
    app.after_request(_add_headers)
    return limiter


def _reset_seconds(limiter: Limiter) -> tuple[int, int, int] | None:
    """The current limit's amount, what is left of it and the seconds until it resets."""
    current = limiter.current_limit
    if current is None:
        return None
    reset_at, remaining = current.window
    return current.limit.amount, remaining, max(1, math.ceil(reset_at - time.time()))


def _add_headers(response: Response) -> Response:
    limiter: Limiter = current_app.extensions["voicechat.limiter"]
    try:
        counted = _reset_seconds(limiter)
    except (RedisError, OSError) as error:  # Redis went away during the request
        _LOGGER.warning("rate limit headers skipped error=%s", type(error).__name__)
        return response
    if counted is not None:
        amount, remaining, reset = counted
        response.headers[LIMIT_HEADER] = str(amount)
        response.headers[REMAINING_HEADER] = str(remaining)
        response.headers[RESET_HEADER] = str(reset)
    return response


def breach() -> RateLimited:
    """The domain error of a request over its caller's limit, to retry when the minute resets."""
    limiter: Limiter = current_app.extensions["voicechat.limiter"]
    counted = _reset_seconds(limiter)
    amount, _, reset = counted if counted is not None else (requests_per_minute(), 0, 60)
    _LOGGER.info("rate limited caller=%s limit=%s retry_after=%s", rate_key(), amount, reset)
    return RateLimited(
        f"Over the limit of {amount} requests per minute; try again in {reset} s.",
        retry_after=reset,
    )


def check_capacity(session: Session, redis: Redis, settings: Settings) -> None:
    """Refuses a new job when the queue is full or its caller has its number of unfinished jobs.

    On PostgreSQL the caller's key row stays locked until the transaction that adds the job
    commits, so two submits at once cannot both take the last place. In open mode (no key row),
    and on SQLite (no row locks), submits at the same instant may pass one more job each.
    """
    if settings.max_queue_depth:
        try:
            waiting = waiting_jobs(redis)
        except (RedisError, OSError) as error:  # the enqueue will say broker_unavailable
            _LOGGER.warning("queue depth unknown error=%s", type(error).__name__)
            waiting = 0
        if waiting >= settings.max_queue_depth:
            _LOGGER.warning("queue full waiting=%s", waiting)
            raise QueueFull(
                f"{waiting} jobs wait in the queue already; try again shortly.",
                retry_after=QUEUE_FULL_RETRY_SECONDS,
            )
    owner = caller_id()
    allowed = settings.max_unfinished_jobs
    connection = session.connection()
    if owner is not None:
        own = connection.execute(_KEY_QUOTA, {"owner": owner}).scalar_one_or_none()
        allowed = allowed if own is None else own
    if not allowed:
        return
    counted = _OPEN_UNFINISHED if owner is None else _OWN_UNFINISHED
    unfinished = connection.execute(counted, {"owner": owner, "allowed": allowed}).scalar_one()
    if unfinished >= allowed:
        raise TooManyUnfinishedJobs(
            f"{unfinished} of your jobs are queued or running, the most allowed at once; "
            "wait for one to finish.",
            retry_after=UNFINISHED_RETRY_SECONDS,
        )
