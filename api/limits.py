"""Each caller's share of the service (its API key's, or in open mode its address's): `/v1`
requests per minute (Flask-Limiter on the service's Redis), unfinished jobs at once, and the
queue's depth past which a submit is refused."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits.storage import RedisStorage
from redis import RedisError
from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from api.access import caller_id
from api.authentication import PROTECTED_PREFIX
from models import transitions
from models.db import GroupCommit
from models.errors import QueueFull, RateLimited, TooManyUnfinishedJobs
from models.queue import JobQueue
from models.settings import Settings
from models.tables import ApiKey, Job, JobStatus

_LOGGER = logging.getLogger(__name__)

# How long a refused submit is told to wait: a job takes seconds, and the queue drains in tens.
UNFINISHED_RETRY_SECONDS = 5
QUEUE_FULL_RETRY_SECONDS = 10
# The IETF draft's names (draft-ietf-httpapi-ratelimit-headers-06): the reset in seconds from now.
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_JOBS, _KEYS = Job.__table__.c, ApiKey.__table__.c
_LOCK_KEY = select(_KEYS.id).where(_KEYS.id == bindparam("owner")).with_for_update()
# Counted only up to the limit (a LIMIT in a subquery): whether the caller is at its limit is all
# a submit needs, and a count of every unfinished job grows with the queue (2 ms at 5,800 queued
# on PostgreSQL, profiled), while this one stops at the limit's number of index entries.
_OPEN_UNDER_LIMIT, _OWN_UNDER_LIMIT = (
    select(func.count())
    .select_from(
        select(_JOBS.id)
        .where(whose, _JOBS.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)))
        .limit(bindparam("allowed"))
        .subquery()
    )
    .scalar_subquery()
    < bindparam("allowed")
    for whose in (_JOBS.api_key_id.is_(None), _JOBS.api_key_id == bindparam("owner"))
)
# A queue depth this process read (from LLEN, or from its last push's LPUSH) is trusted this long
# while under half the limit: it cannot grow past the limit in that time without as many pushes.
_DEPTH_TRUSTED_SECONDS = 1.0


# The count and the expiry of the counter this thread's request has just incremented.
_COUNTED: ContextVar[tuple[str, int, float] | None] = ContextVar("counted", default=None)
# limits' fixed-window INCR (incr_expire.lua), answering the counter's milliseconds to live too.
_INCR_AND_TTL = b"""
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


class _CountingStorage(RedisStorage):
    """limits' Redis storage whose count also reads the counter's expiry, kept for the request:
    the RateLimit headers and a 429's Retry-After come from it, so a request's limit costs one
    round trip (limits reads a window's remainder and reset with a GET and a TTL, two more).
    Kept as a small subclass because neither limits nor Flask-Limiter returns the count."""

    STORAGE_SCHEME = ["voicechat+redis"]

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix("voicechat+"), **options)
        self._incr_and_ttl = self.get_connection().register_script(_INCR_AND_TTL)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        _COUNTED.set(None)  # not this request's count, should the script fail
        count, ttl_ms = self._incr_and_ttl([self.prefixed_key(key)], [expiry, amount])
        _COUNTED.set((key, int(count), time.time() + max(int(ttl_ms), 0) / 1000))
        return int(count)

    def get(self, key: str) -> int:
        counted = _COUNTED.get()
        return counted[1] if counted and counted[0] == key else super().get(key)

    def get_expiry(self, key: str) -> float:
        counted = _COUNTED.get()
        return counted[2] if counted and counted[0] == key else super().get_expiry(key)


def rate_key() -> str:
    """Whose requests are counted together: the API key's, else the remote address's."""
    key_id = caller_id()
    return f"key:{key_id}" if key_id is not None else f"addr:{request.remote_addr or ''}"


def requests_per_minute() -> int:
    """The caller's requests per minute (its key's, else RATE_LIMIT_PER_MINUTE; 0 is none)."""
    own = g.get("api_key_requests_per_minute")
    settings: Settings = current_app.extensions["voicechat.settings"]
    return settings.rate_limit_per_minute if own is None else int(own)


def _limit() -> str:
    return f"{max(requests_per_minute(), 1)} per minute"


def _exempt() -> bool:
    return requests_per_minute() == 0


class _Limiter(Limiter):
    """Flask-Limiter, whose request hook returns at once outside `/v1`, the requests it counts: it
    resolves a request's limits and exemptions before it asks a request filter (`bench.submit`'s
    `/healthz`, bench/results.md)."""

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if request.path.startswith(PROTECTED_PREFIX):
            super()._check_request_limit(callable_name, in_middleware)


def init_limiter(app: Flask, settings: Settings) -> None:
    """Counts each caller's `/v1` requests per fixed minute on Redis, or while it is unreachable
    in each process's memory; a failure of the limiter is logged, never a 500."""
    limiter = _Limiter(
        key_func=rate_key,
        application_limits=[_limit],
        storage_uri=f"voicechat+{settings.redis_url}",
        storage_options={"socket_timeout": 2, "socket_connect_timeout": 2},
        # One counter per caller and minute: one INCR a request, and an exact reset time.
        strategy="fixed-window",
        headers_enabled=False,  # its Reset is a timestamp and its Retry-After on every answer
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        key_prefix="voicechat",
    )
    # A request filter, not an exemption: Flask-Limiter resolves a route's limits before it
    # asks an exemption, and skips their counting for a filtered request.
    limiter.request_filter(_exempt)
    limiter.init_app(app)
    app.extensions["voicechat.limiter"] = limiter
    app.after_request(_add_headers)


def _window() -> tuple[int, int, int] | None:
    """The current limit's amount, what is left of it and the seconds until it resets."""
    current = current_app.extensions["voicechat.limiter"].current_limit
    if current is None:
        return None
    reset_at, remaining = current.window
    return current.limit.amount, remaining, max(1, math.ceil(reset_at - time.time()))


def _add_headers(response: Response) -> Response:
    if not request.path.startswith(PROTECTED_PREFIX):  # uncounted (`_Limiter`)
        return response
    try:
        counted = _window()
    except (RedisError, OSError) as error:  # Redis went away during the request
        _LOGGER.warning("rate limit headers skipped error=%s", type(error).__name__)
        return response
    if counted is not None:
        response.headers.update(zip(RATE_LIMIT_HEADERS, map(str, counted), strict=True))
    return response


def breach() -> RateLimited:
    """The error of a request over its caller's limit, to retry when the minute resets."""
    counted = _window()
    amount, _, reset = counted if counted is not None else (requests_per_minute(), 0, 60)
    _LOGGER.info("rate limited caller=%s limit=%s retry_after=%s", rate_key(), amount, reset)
    return RateLimited(
        f"Over the limit of {amount} requests per minute; try again in {reset} s.",
        retry_after=reset,
    )


def check_queue(queue: JobQueue, settings: Settings) -> None:
    """Refuses a new job when MAX_QUEUE_DEPTH jobs wait already."""
    if not settings.max_queue_depth:
        return
    depth, seen_at = queue.depth_seen
    if depth < settings.max_queue_depth / 2 and time.monotonic() - seen_at < _DEPTH_TRUSTED_SECONDS:
        return
    try:
        depth = queue.waiting()
    except (RedisError, OSError) as error:  # the enqueue will say broker_unavailable
        _LOGGER.warning("queue depth unknown error=%s", type(error).__name__)
        return
    if depth >= settings.max_queue_depth:
        _LOGGER.warning("queue full waiting=%s", depth)
        raise QueueFull(
            f"{depth} jobs wait in the queue already; try again shortly.",
            retry_after=QUEUE_FULL_RETRY_SECONDS,
        )


def add_within_limit(
    session: Session,
    job: Job,
    settings: Settings,
    also: Callable[[Connection], object] | None = None,
) -> None:
    """Adds a new job's row, and what `also` writes beside it, unless its caller has its share
    of unfinished jobs already. On PostgreSQL uncommitted, the key's row locked until the
    transaction that adds the job commits, so two submits at once cannot both take the last
    place; on SQLite committed, by the process's `GroupCommit`, one submit after another (other
    processes' submits at the same instant, and in open mode any, may pass one more job each)."""
    own = g.get("api_key_max_unfinished_jobs")
    allowed: int = settings.max_unfinished_jobs if own is None else own
    owner = caller_id()
    only_if = None
    if allowed:
        only_if = _OPEN_UNDER_LIMIT if owner is None else _OWN_UNDER_LIMIT

    def insert(connection: Connection) -> bool:
        added = transitions.insert_queued(connection, job, only_if, owner=owner, allowed=allowed)
        if added and also is not None:
            also(connection)
        return added

    commits: GroupCommit | None = current_app.extensions.get("voicechat.group_commit")
    if commits is not None:  # SQLite's
        added = commits.run(insert)
    else:
        if allowed and owner is not None:
            session.connection().execute(_LOCK_KEY, {"owner": owner})
        added = insert(session.connection())
    if not added:
        raise TooManyUnfinishedJobs(
            f"{allowed} of your jobs are queued or running, the most allowed at once; "
            "wait for one to finish.",
            retry_after=UNFINISHED_RETRY_SECONDS,
        )
