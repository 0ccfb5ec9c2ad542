"""Database engines and sessions for both processes; SQLite tuned for a writer beside readers."""

from __future__ import annotations

import fcntl
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

# On the hot paths (API, job worker) a pooled PostgreSQL connection idle this long is pinged
# before use, finding a restart or a dropped connection; pinging every checkout cost a round trip
# per request (profiled on submit). One broken while busy fails its request with 503
# `database_unavailable` (a worker's claim is retried), and SQLAlchemy replaces the pool.
PING_IDLE_SECONDS = 1.0


def make_engine(
    url: str,
    *,
    hold_limit_seconds: int | None = None,
    ping_idle_seconds: float = 0.0,
    **kwargs: Any,
) -> Engine:
    """An engine for `url`. On PostgreSQL, `hold_limit_seconds` (a worker's; more than a job may
    run) ends a session idle in transaction that long and probes its TCP connection, so a frozen or
    lost worker cannot hold a job's row lock longer; `ping_idle_seconds` pings only connections
    idle that long (0: every one)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The API and the worker write from different processes: WAL lets readers
            # go on during a write, busy_timeout makes a writer wait instead of failing.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if hold_limit_seconds is not None:
        options = (
            f"-c idle_in_transaction_session_timeout={hold_limit_seconds * 1000} "
            "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
        )
        kwargs.setdefault("connect_args", {})["options"] = options
    if not ping_idle_seconds:
        return create_engine(url, pool_pre_ping=True, **kwargs)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine, ping_idle_seconds)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Pings connections idle `idle_seconds` or more; a failed one is dropped and another tried."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new (just connected), or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)  # what `pool_pre_ping` runs
            dbapi_connection.rollback()  # leave no transaction open on a pooled connection
        except engine.dialect.loaded_dbapi.Error as error:  # the connection is gone
            raise exc.DisconnectionError(str(error)) from error


# SQLite's busy handler sleeps a locked writer 1, 2, 5 ... up to 100 ms a try, however soon the
# lock frees: under concurrent submits that was the p99 (0.9 s at 16 connections, bench.submit).
# Writers take turns instead, each woken as the one before lets go: a thread lock among a
# process's threads, and a blocking flock of a file beside the database among processes (filelock
# and fasteners poll, sleeping between tries, as SQLite does).
class _WriterTurn:
    def __init__(self, database: str | None) -> None:
        in_memory = not database or database == ":memory:" or database.startswith("file:")
        self.path = None if in_memory else f"{database}-writer"
        self.lock = threading.Lock()
        self.file: int | None = None

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            if self.path is not None:
                if self.file is None:
                    self.file = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self.file, fcntl.LOCK_EX)
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.file is not None:
                fcntl.flock(self.file, fcntl.LOCK_UN)
        finally:
            self.lock.release()


_T = TypeVar("_T")
_Write = tuple[Callable[[Connection], Any], "Future[Any]"]
# The most writes one transaction takes; more wait for the next.
GROUP_COMMIT_MOST = 64


class GroupCommit:
    """One thread of this process writes new jobs to SQLite: each write handed to it, and all
    that wait beside it, in one transaction, one turn and one commit, where a commit a submit had
    the submits queue for the writer turn (bench.submit; bench/results.md, 2026-12-07 late).
    Should any write of a batch fail, none is kept and each is written again alone, so each
    caller hears its own outcome. Kept by hand: neither SQLAlchemy nor sqlite3 has one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._waiting: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        # The thread holds the queue, not this object, and ends once nobody holds it.
        owner = weakref.ref(self)
        threading.Thread(
            target=_write_batches, args=(owner, self._waiting), name="group-commit", daemon=True
        ).start()
        weakref.finalize(self, self._waiting.put, None)

    def run(self, write: Callable[[Connection], _T]) -> _T:
        """Runs `write` in the next transaction; returns its result once that has committed."""
        if self._pid != os.getpid():  # forked: the thread stayed with the parent
            self._start()
        done: Future[_T] = Future()
        self._waiting.put((write, done))
        return done.result()

    def write(self, batch: list[_Write]) -> None:
        """Commits `batch` as one, or, should that fail, each write alone."""
        try:
            self._commit(batch)
        except Exception as error:
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            for write in batch:
                try:
                    self._commit([write])
                except Exception as alone:
                    write[1].set_exception(alone)

    def _commit(self, batch: list[_Write]) -> None:
        with write_turn(self.engine), self.engine.begin() as connection:
            results = [write(connection) for write, _ in batch]
        for (_, done), result in zip(batch, results, strict=True):
            done.set_result(result)


def _write_batches(
    owner: weakref.ref[GroupCommit], waiting: queue.SimpleQueue[_Write | None]
) -> None:
    while (first := waiting.get()) is not None:
        batch = [first]
        while len(batch) < GROUP_COMMIT_MOST and not waiting.empty():
            if (write := waiting.get()) is None:
                break
            batch.append(write)
        group = owner()
        if group is None:
            return
        group.write(batch)
        del group


_SQLITE_WRITERS: dict[str, _WriterTurn] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def write_turn(engine: Engine) -> AbstractContextManager[object]:
    """Held around a write transaction: this writer's turn on SQLite; no-op elsewhere."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _SQLITE_WRITERS_GUARD:
        turn = _SQLITE_WRITERS.get(str(engine.url))
        if turn is None:
            turn = _SQLITE_WRITERS[str(engine.url)] = _WriterTurn(engine.url.database)
        return turn


def _after_fork() -> None:
    """A forked child starts with turns of its own: its parent's locks may be held, and an
    inherited descriptor shares the parent's flock."""
    global _SQLITE_WRITERS_GUARD
    _SQLITE_WRITERS_GUARD = threading.Lock()
    for turn in _SQLITE_WRITERS.values():
        if turn.file is not None:
            os.close(turn.file)
    _SQLITE_WRITERS.clear()


os.register_at_fork(after_in_child=_after_fork)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Returns a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
