"""API keys: made, found by their secret's hash, revoked; and whether the service runs open
(with no unrevoked key, and then only on loopback: `check_bind_at`)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_session_factory
from models.tables import ApiKey, utcnow

SECRET_PREFIX = "vc_"
WEBHOOK_SECRET_PREFIX = "whsec_"
# The secret's first characters kept in the clear, so a listing can tell keys apart.
SHOWN_PREFIX_CHARS = 10
# How long the answer to "does any key exist?" is reused before the database is asked again.
MODE_CACHE_SECONDS = 5.0
OPEN_NOTICE = "no API keys: the service is open to anyone on this machine"


@dataclass(frozen=True)
class NewKey:
    """A key just made: its row and the two secrets, which are shown this once."""

    row: ApiKey
    secret: str
    webhook_secret: str


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest a key's secret is stored and looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    *,
    requests_per_minute: int | None = None,
    max_unfinished_jobs: int | None = None,
) -> NewKey:
    """Makes and commits a key with its secret and webhook secret; None limits: the service's."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    webhook_secret = WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()
    row = ApiKey(
        name=name,
        prefix=secret[:SHOWN_PREFIX_CHARS],
        secret_hash=hash_secret(secret),
        webhook_secret=webhook_secret,
        requests_per_minute=requests_per_minute,
        max_unfinished_jobs=max_unfinished_jobs,
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    return NewKey(row=row, secret=secret, webhook_secret=webhook_secret)


@dataclass(frozen=True)
class Caller:
    """Whose key a request carries, and its own limits (None: the service's)."""

    key_id: str
    requests_per_minute: int | None
    max_unfinished_jobs: int | None


_CALLER = select(ApiKey.id, ApiKey.requests_per_minute, ApiKey.max_unfinished_jobs).where(
    ApiKey.secret_hash == bindparam("secret_hash"), ApiKey.revoked_at.is_(None)
)


def find_caller(engine: Engine, secret: str) -> Caller | None:
    """The unrevoked key whose secret this is, or None: one lookup on the unique hash, on a
    connection held only for it (it runs on every keyed request)."""
    with engine.connect() as connection:
        row = connection.execute(_CALLER, {"secret_hash": hash_secret(secret)}).first()
    return None if row is None else Caller(*row)


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revokes a key at once (None: no such key); a second revocation keeps the first's time."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def any_keys(session: Session) -> bool:
    """Whether the database holds an unrevoked key."""
    query = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)
    return session.scalars(query).first() is not None


class KeyMode:
    """Whether keys are required, asked of the database at most every `MODE_CACHE_SECONDS`: a key
    is always looked up itself, so revoking is immediate; only open/keyed lags, by that much."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float = MODE_CACHE_SECONDS) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._lock = threading.Lock()
        self._answer = False
        self._until = 0.0

    def keyed(self) -> bool:
        """Whether any unrevoked key exists (so every /v1 request needs one)."""
        with self._lock:
            if time.monotonic() < self._until:
                return self._answer
        with self.sessions() as session:
            answer = any_keys(session)
        with self._lock:
            self._answer, self._until = answer, time.monotonic() + self.ttl
        return answer


def is_loopback(host: str) -> bool:
    """Whether a bind or client address is this machine's alone (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or the empty "all interfaces"


@dataclass(frozen=True)
class BindCheck:
    """Whether to refuse listening on some addresses, and whether the service runs open."""

    refusal: str | None
    runs_open: bool


def check_bind_at(database_url: str, hosts: Iterable[str]) -> BindCheck:
    """Whether the service may listen on `hosts`: running open, only on loopback. The keys are
    read in an engine of its own, waiting 5 s at most: a starting process never hangs."""
    public = sorted({host or "0.0.0.0" for host in hosts if not is_loopback(host)})
    options: dict[str, Any] = {}
    if database_url.startswith("postgres"):
        options["connect_args"] = {"connect_timeout": 5}
    engine = make_engine(database_url, **options)
    try:
        with make_session_factory(engine)() as session:
            keyed = any_keys(session)
        reason = "no API key exists"
    except Exception as error:  # any failure: the keys cannot be confirmed
        keyed, reason = False, f"the API keys cannot be read ({type(error).__name__})"
        if not public:
            return BindCheck(refusal=None, runs_open=False)
    finally:
        engine.dispose()
    if keyed or not public:
        return BindCheck(refusal=None, runs_open=not keyed)
    refusal = (
        f"refusing to listen on {', '.join(public)}: {reason}, so the service would be open to "
        "anyone who reaches it; create one with `flask --app api keys create --name NAME`, "
        "or bind to 127.0.0.1"
    )
    return BindCheck(refusal=refusal, runs_open=True)
