"""The pool child's lease keeper: renews the running job's lease and its readiness key."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from models import heartbeat, transitions
from models.db import make_engine, make_session_factory
from models.settings import Settings
from worker import runtime

_LOGGER = logging.getLogger(__name__)

# The job this process runs now, if any, and the lease holder's name: the keeper renews it.
_LEASE: dict[str, str | None] = {"job_id": None, "owner": None}


def host_prefix() -> str:
    """Returns the start every worker id on this host shares (a parent's children's ids)."""
    return f"{socket.gethostname()}:"


def worker_id() -> str:
    """Names this worker process: as a job's lease holder, and in readiness reports."""
    return f"{host_prefix()}{os.getpid()}"


def hold_lease(job_id: str | None, owner: str) -> None:
    """Tells the lease keeper which job's lease to keep renewing.

    Args:
        job_id: The job this process now runs; None when it finished.
        owner: The lease holder's name, as the claim wrote it.
    """
    _LEASE.update(job_id=job_id, owner=owner)


class LeaseKeeper(threading.Thread):
    """Renews the lease of the job this process runs, and keeps its readiness key alive.

    Both are beats of one clock (`WORKER_HEARTBEAT_SECONDS`): a lease lasts three beats, as
    does the readiness key (models/heartbeat.py), so a dead process loses both together.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="voicechat-lease-keeper", daemon=True)
        self.settings = settings
        self.client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.stopped = threading.Event()
        self.worker_id = worker_id()
        self.sessions = make_session_factory(make_engine(settings.database_url))

    def beat(self) -> None:
        """Publishes this process's readiness once."""
        info = {"worker_id": self.worker_id, "pid": os.getpid(), **runtime.load_status()}
        interval = self.settings.worker_heartbeat_seconds
        heartbeat.publish(self.client, self.worker_id, info, ttl_seconds=interval * 3)

    def renew(self) -> None:
        """Extends the lease of the job this process is running, if any."""
        job_id, owner = _LEASE["job_id"], _LEASE["owner"]
        if job_id is None or owner is None:
            return
        with self.sessions() as session:
            if not transitions.renew_lease(session, job_id, owner, self.settings.lease_seconds):
                _LOGGER.warning("lease lost job_id=%s owner=%s", job_id, owner)

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
