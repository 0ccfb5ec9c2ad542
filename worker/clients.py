"""This process's database sessions, Redis clients and file stores: each made once, on first use.

A connection pool is not fork-safe: a forked child forgets whatever its parent made.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from models import storage
from models.db import PING_IDLE_SECONDS, make_engine, make_session_factory
from models.event_log import JobEvents
from worker.celery_app import settings

T = TypeVar("T")

# One lock for all: the maintenance worker runs tasks in threads, and `stores` makes `sessions`.
_LOCK = threading.RLock()
_MADE: list[Any] = []


def _per_process(make: Callable[[], T]) -> Callable[[], T]:
    made = functools.cache(make)
    _MADE.append(made)

    @functools.wraps(make)
    def get() -> T:
        with _LOCK:
            return made()

    return get


def _forget() -> None:
    """Drops every client the parent made, and its lock (a parent's thread may have held it)."""
    global _LOCK
    _LOCK = threading.RLock()
    for made in _MADE:
        made.cache_clear()


os.register_at_fork(after_in_child=_forget)


@dataclass(frozen=True)
class Stores:
    """Where this process reads uploads and writes replies (`STORAGE_BACKEND`)."""

    uploads: storage.Store
    results: storage.Store


@_per_process
def sessions() -> sessionmaker[Session]:
    """Pooled sessions: a job worker's ping only idle connections (the hot path)."""
    if settings.worker_role != "jobs":
        return make_session_factory(make_engine(settings.database_url))
    engine = make_engine(
        settings.database_url,
        hold_limit_seconds=settings.worker_hold_limit_seconds,
        ping_idle_seconds=PING_IDLE_SECONDS,
    )
    return make_session_factory(engine)


@_per_process
def parent_sessions() -> sessionmaker[Session]:
    """The worker parent's sessions, with no pool: children it forks must not inherit one."""
    engine = make_engine(
        settings.database_url,
        hold_limit_seconds=settings.worker_hold_limit_seconds,
        poolclass=NullPool,
    )
    return make_session_factory(engine)


@_per_process
def events() -> JobEvents:
    """The writer of job event streams."""
    return JobEvents.connect(settings.redis_url, ttl_seconds=settings.events_ttl_seconds)


@_per_process
def redis() -> Redis:
    """The maintenance worker's Redis (webhook attempt locks, retention's event logs)."""
    return Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)


@_per_process
def stores() -> Stores:
    """The file stores, over `sessions` (the database store keeps its files in rows)."""
    return Stores(
        uploads=storage.open_store(settings, storage.UPLOADS, sessions()),
        results=storage.open_store(settings, storage.RESULTS, sessions()),
    )
