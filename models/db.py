"""Database engines and sessions for both processes; SQLite tuned for a writer beside readers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, hold_limit_seconds: int | None = None, **kwargs: Any) -> Engine:
    """Creates an engine for `url`, enabling WAL and a busy timeout on SQLite.

    Args:
        url: A SQLAlchemy database URL (SQLite or PostgreSQL).
        hold_limit_seconds: For a worker's connections to PostgreSQL: the server ends a session
            left idle inside a transaction this long, and probes its client's TCP connection
            every few seconds, so a worker frozen or lost in the middle of a write (a paused VM,
            a dead host) cannot hold a job's row lock, and with it the release of the job, for
            longer. Give it more than the longest a worker may run a job.
        **kwargs: Passed on to `create_engine`.

    Returns:
        The engine.
    """
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
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Returns a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yields a session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
