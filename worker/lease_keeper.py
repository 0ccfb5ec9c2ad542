"""The pool child's lease keeper: renews the job's lease and readiness, and tells the attempt."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from models import cancel_signal, heartbeat, queries, transitions
from models.db import make_engine, make_session_factory
from models.settings import Settings
from worker import runtime

_LOGGER = logging.getLogger(__name__)


@dataclass
class Held:
    """The lease this process's attempt holds, whether it is lost, and whether a stop was asked."""

    lease: transitions.Lease
    lost: threading.Event = field(default_factory=threading.Event)
    canceled: threading.Event = field(default_factory=threading.Event)


class CancelWatch:
    """Whether the attempt's job was asked to stop: the keeper's word, or the cancel key, read at
    most every `CHECK_SECONDS` (`looked`: the claim just read the row's flag)."""

    def __init__(
        self,
        redis: Redis,
        held: Held,
        clock: Callable[[], float] = time.monotonic,
        *,
        looked: bool = False,
    ) -> None:
        self.redis = redis
        self.held = held
        self.clock = clock
        self.next_look = clock() + cancel_signal.CHECK_SECONDS if looked else 0.0

    def requested(self, *, now: bool = False) -> bool:
        """Whether to stop; `now` reads the key whenever it was last read (a stage boundary)."""
        if self.held.canceled.is_set():
            return True
        if not now and self.clock() < self.next_look:
            return False
        self.next_look = self.clock() + cancel_signal.CHECK_SECONDS
        try:
            raised = cancel_signal.is_raised(self.redis, self.held.lease.job_id)
        except (RedisError, OSError):
            return False  # the keeper reads the row at its next renewal
        if raised:
            self.held.canceled.set()
        return raised


# The attempt this process runs now, if any: the keeper renews its lease.
_HELD: dict[str, Held | None] = {"held": None}


def children_prefix(parent_pid: int | None = None) -> str:
    """The start of one Celery parent's children's worker ids: the host, then the parent's pid."""
    return f"{socket.gethostname()}:{os.getpid() if parent_pid is None else parent_pid}:"


def worker_id() -> str:
    """Names this pool child: as a job's lease holder, and in readiness reports."""
    return f"{children_prefix(os.getppid())}{os.getpid()}"


def hold_lease(held: Held | None) -> None:
    """Tells the lease keeper which attempt's lease to keep renewing (None: no job runs)."""
    _HELD["held"] = held


class LeaseKeeper(threading.Thread):
    """Renews the running job's lease and the readiness key on one clock: both last three beats,
    so a dead process loses both together."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="voicechat-lease-keeper", daemon=True)
        self.settings = settings
        self.client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.stopped = threading.Event()
        self.worker_id = worker_id()
        self.sessions = make_session_factory(
            make_engine(
                settings.database_url, hold_limit_seconds=settings.worker_hold_limit_seconds
            )
        )

    def beat(self) -> None:
        """Publishes this process's readiness once."""
        info = {"worker_id": self.worker_id, "pid": os.getpid(), **runtime.load_status()}
        interval = self.settings.worker_heartbeat_seconds
        heartbeat.publish(self.client, self.worker_id, info, ttl_seconds=interval * 3)

    def renew(self) -> None:
        """Extends the running job's lease; the attempt is told when it is lost or a stop asked."""
        held = _HELD["held"]
        if held is None or held.lost.is_set():
            return
        with self.sessions() as session:
            if not transitions.renew_lease(session, held.lease, self.settings.lease_seconds):
                held.lost.set()
                _LOGGER.warning(
                    "lease lost job_id=%s attempt=%d", held.lease.job_id, held.lease.attempt
                )
            elif queries.cancel_requested(session, held.lease.job_id):
                held.canceled.set()  # the row is the truth, should the cancel key be gone

    def run(self) -> None:
        """Renews and beats every `WORKER_HEARTBEAT_SECONDS` until stopped."""
        while not self.stopped.is_set():
            try:
                self.renew()
            except SQLAlchemyError as error:
                _LOGGER.warning("lease renewal failed error=%s", type(error).__name__)
            try:
                self.beat()
            except RedisError as error:
                _LOGGER.warning("heartbeat failed error=%s", type(error).__name__)
            self.stopped.wait(self.settings.worker_heartbeat_seconds)

    def stop(self) -> None:
        """Stops beating and withdraws the readiness key, so readiness drops at once."""
        self.stopped.set()
        with contextlib.suppress(RedisError):
            heartbeat.withdraw(self.client, self.worker_id)
