"""`Idempotency-Key` on `POST /v1/jobs`, as Stripe and draft-ietf-httpapi-idempotency-key-header
mean it: the same key and the same request make one job, replayed to every retry (`PARAMETER`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Request
from sqlalchemy import ColumnElement, Connection, and_, delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.access import caller_id
from api.openapi.declare import header
from models.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidIdempotencyKey
from models.settings import Settings
from models.tables import IdempotencyRecord, Job, utcnow

_LOGGER = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# A first request holds its key only until its job is stored (a second or so); one that crashed
# on the way must not hold it for ever.
IN_FLIGHT_STALE_SECONDS = 60
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")
PARAMETER = header(
    HEADER,
    "Makes retries safe (draft-ietf-httpapi-idempotency-key-header, as Stripe does): the same "
    "key with the same request (body form, prompt text or recording bytes, reply format, "
    "conversation and options; not `Prefer`) answers 202 with the job the first one made, as it "
    "is now, and `Idempotent-Replayed: true`; with another request, 422 "
    "`idempotency_key_reused`; while the first is still being handled, 409 "
    "`idempotency_key_in_flight`. Keys are per API key and kept IDEMPOTENCY_TTL_SECONDS; a "
    "submit refused with 429 or 503 gives its key back. 1 to 255 printable ASCII characters, "
    "bare or quoted.",
    # Bare keys only: the quoted form is accepted too, but no schema can say both.
    {"type": "string", "maxLength": MAX_KEY_LENGTH, "pattern": "^[!#-~]([ -~]*[!-~])?$"},
)


@dataclass(frozen=True)
class Claim:
    """This request's hold on a key: the row it wrote, told apart by its creation time."""

    scope: str
    key: str
    created_at: datetime


def requested_key(request: Request) -> str | None:
    """The `Idempotency-Key` header, bare or the draft's quoted string; None when absent."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey("Send one Idempotency-Key header, not several.")
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = re.sub(r'\\(["\\])', r"\1", key[1:-1])
    if not (_PRINTABLE.match(key) and len(key) <= MAX_KEY_LENGTH):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."
        )
    return key


def fingerprint(request: Request, job: Job, audio: bytes | None) -> str:
    """The SHA-256 of what makes a request the same: its media type and the job as it would be
    stored, with its recording's bytes; so field order, JSON spacing, a multipart boundary and a
    `reply` left out (`text`) do not count, nor does `Prefer: wait` (how to answer, not what)."""
    made = {
        "reply_format": job.reply_format,
        "input_text": job.input_text,
        "conversation_id": job.conversation_id,
        "options": job.options,
    }
    parts = [
        request.method.encode(),
        request.path.encode(),
        request.mimetype.encode(),
        json.dumps(made, sort_keys=True, separators=(",", ":")).encode(),
        audio or b"",
    ]
    digest = hashlib.sha256()
    for part in parts:  # each length-prefixed, so no two lists of parts hash alike
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def claim(session: Session, key: str, request_fingerprint: str, settings: Settings) -> Claim | Job:
    """Takes `key` for this request (`bind` names its job in the transaction that stores the
    job; `release` gives it back), or returns the job the same request made with it, to replay.
    The row is committed at once: of two requests with one key, the primary key lets one in. A
    stale row (expired, in flight past IN_FLIGHT_STALE_SECONDS, or its job gone) is taken over."""
    scope, now = caller_id() or "", utcnow()
    session.add(
        IdempotencyRecord(scope=scope, key=key, fingerprint=request_fingerprint, created_at=now)
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    else:
        return Claim(scope, key, now)
    existing = session.get(IdempotencyRecord, (scope, key), populate_existing=True)
    if existing is None:  # its first request failed and gave it back just now
        raise IdempotencyKeyInFlight("A request with this Idempotency-Key just ended; retry.")
    age = now - existing.created_at
    job = None if existing.job_id is None else session.get(Job, existing.job_id)
    stale = age > timedelta(seconds=settings.idempotency_ttl_seconds) or (
        job is None
        and (existing.job_id is not None or age.total_seconds() > IN_FLIGHT_STALE_SECONDS)
    )
    if stale:
        return _take_over(session, existing, request_fingerprint, now)
    if job is None:
        raise IdempotencyKeyInFlight(
            "The first request with this Idempotency-Key is still being handled; retry shortly."
        )
    if existing.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was sent with a different request; use a new key.",
            field=HEADER,
        )
    _LOGGER.info("idempotent replay job_id=%s", job.id)
    return job


def _take_over(
    session: Session, stale: IdempotencyRecord, request_fingerprint: str, now: datetime
) -> Claim:
    """Claims an expired or abandoned row, unless another request did so first."""
    taken = session.execute(
        update(IdempotencyRecord)
        .where(_matching(stale))
        .values(fingerprint=request_fingerprint, job_id=None, created_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if getattr(taken, "rowcount", 0) != 1:
        raise IdempotencyKeyInFlight("Another request took this Idempotency-Key just now; retry.")
    return Claim(stale.scope, stale.key, now)


def _matching(record: Claim | IdempotencyRecord) -> ColumnElement[bool]:
    return and_(
        IdempotencyRecord.scope == record.scope,
        IdempotencyRecord.key == record.key,
        IdempotencyRecord.created_at == record.created_at,
    )


def bind(connection: Connection, held: Claim, job_id: str) -> None:
    """Names the job the key was taken for, in the transaction that stores the job."""
    connection.execute(update(IdempotencyRecord).where(_matching(held)).values(job_id=job_id))


def release(session: Session, held: Claim) -> None:
    """Gives the key back after a failed request, so a retry with it is handled afresh; a
    failure here only leaves the row to go stale."""
    try:
        session.rollback()
        session.execute(delete(IdempotencyRecord).where(_matching(held)))
        session.commit()
    except SQLAlchemyError as error:
        _LOGGER.warning("idempotency key not released error=%s", type(error).__name__)
