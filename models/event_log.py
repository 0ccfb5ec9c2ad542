"""Each job's event log in a Redis Stream: the worker appends, the web process reads.

A stream, not pub/sub: a late reader (`Last-Event-ID`) still gets what it missed. The row stays
the truth: a failed append is logged, readers fall back to the row. Appends are fenced by attempt
like the row's writes: one `done` per job and nothing after it, and no word from a lost attempt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from models import metrics
from models.tables import Job, UTCDateTime
from models.transitions import mark_done_announced
from models.webhooks import COMPLETED, WebhookSender, announce

_LOGGER = logging.getLogger(__name__)

KEY_PREFIX = "voicechat:events:"
# A reply streams one event per token; a cap keeps a runaway job from filling Redis.
MAX_EVENTS = 10_000

STATUS = "status"  # queued (with the lost attempt) / running (with its attempt), as the row changes
STAGE = "stage"  # transcribing / generating / synthesizing
TRANSCRIPT = "transcript"  # what the recogniser heard
DELTA = "delta"  # a piece of reply text as the language model produces it
SPEECH = "speech"  # one sentence of the spoken reply is stored, while the rest is generated
AUDIO = "audio"  # the spoken reply is stored
DONE = "done"  # the job reached a terminal status; always the last event
# An erased job's fence names its end before any event: every append is refused.
ERASED = "0-0"


@dataclass(frozen=True)
class Event:
    """One entry of a job's log; `id` is the stream id, usable as SSE's `Last-Event-ID`."""

    id: str
    type: str
    data: dict[str, Any]


# KEYS: the stream, the job's fence (a hash: `floor`, the lowest attempt that may still append,
# and `done`, the id of the final event). ARGV: attempt, max length, ttl, then type, data and
# status of each event: all of one attempt, fenced as one, so several cost one round trip.
_APPEND = """
local ended = redis.call('HEXISTS', KEYS[2], 'done') == 1
local attempt = tonumber(ARGV[1])
local floor = tonumber(redis.call('HGET', KEYS[2], 'floor') or '0')
local function add(event_type, data)
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', event_type, 'data', data)
end
local id, refused
for i = 4, #ARGV, 3 do
  local kind, status = ARGV[i], ARGV[i + 2]
  -- Each event fenced, a batch's too: nothing after `done`, nothing from an attempt past.
  if ended or (kind ~= 'done' and attempt < floor) then
    refused = true
    break
  end
  if kind == 'status' and status == 'running' and attempt > 1 and floor < attempt then
    add('status', '{"status":"queued","attempt":' .. (attempt - 1) .. '}')
  end
  id = add(kind, ARGV[i + 1])
  if kind == 'done' then
    ended = true
    redis.call('HSET', KEYS[2], 'done', id)
  elseif kind == 'status' and status == 'queued' then
    floor = attempt + 1
    redis.call('HSET', KEYS[2], 'floor', floor)
  elseif attempt > floor then
    floor = attempt
    redis.call('HSET', KEYS[2], 'floor', floor)
  end
end
if id then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if refused then return false end
return id
"""


class Append(Enum):
    """What came of appending an event."""

    APPENDED = "appended"
    FENCED = "fenced"  # a later attempt has written, or the job's `done` is in the log
    UNREACHABLE = "unreachable"  # Redis failed; logged (the row is the truth)


def key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}"


def fence_key(job_id: str) -> str:
    """A job's fence: the lowest attempt that may append, and its `done` event's id."""
    return f"{KEY_PREFIX}{job_id}:fence"


def _stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


class JobEvents:
    """Appends to and reads the per-job streams."""

    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self._append = redis.register_script(_APPEND)

    def warm(self) -> None:
        """Connects and loads the append script now, so the first event pays for neither."""
        self.redis.script_load(_APPEND)

    @classmethod
    def connect(cls, redis_url: str, *, ttl_seconds: int) -> JobEvents:
        """A client of its own (make it after any fork); a lost Redis costs seconds, not minutes."""
        client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, ttl_seconds=ttl_seconds)

    def publish(
        self, job_id: str, event_type: str, data: dict[str, Any], *, attempt: int
    ) -> Append:
        """Appends an event of `attempt` (0: the API) unless fenced; never raises on Redis."""
        return self.publish_all(job_id, [(event_type, data)], attempt=attempt)

    def publish_all(
        self, job_id: str, events: Sequence[tuple[str, dict[str, Any]]], *, attempt: int
    ) -> Append:
        """Appends events (type, data) of `attempt` in order, in one round trip, unless fenced."""
        arguments: list[str | int] = [attempt, MAX_EVENTS, self.ttl_seconds]
        for event_type, data in events:
            status = str(data.get("status", "")) if event_type == STATUS else ""
            arguments += [event_type, json.dumps(data, separators=(",", ":")), status]
        try:
            appended = self._append(keys=[key(job_id), fence_key(job_id)], args=arguments)
        except (RedisError, OSError) as error:
            _LOGGER.warning(
                "event not published job_id=%s type=%s error=%s",
                job_id,
                ",".join(event_type for event_type, _ in events),
                type(error).__name__,
            )
            return Append.UNREACHABLE
        return Append.APPENDED if appended else Append.FENCED

    def requeued(self, job_id: str, attempt: int) -> Append:
        """Tells that `attempt` was lost and its job queued again; the fence refuses it from now."""
        return self.publish(
            job_id, STATUS, {"status": "queued", "attempt": attempt}, attempt=attempt
        )

    def erase(self, job_id: str, *, fence_seconds: int) -> None:
        """Deletes a job's stream, its fence closed for `fence_seconds` (longer than an attempt
        may still run): a running attempt's next event is refused, so it stops."""
        fence = fence_key(job_id)
        pipe = self.redis.pipeline()  # MULTI: no append lands between the delete and the close
        pipe.delete(key(job_id), fence)
        pipe.hset(fence, "done", ERASED)
        pipe.expire(fence, fence_seconds)
        pipe.execute()

    def ended_by(self, job_id: str, after: str) -> bool:
        """Whether stream id `after` is at or past the job's `done`: the reader has seen the end."""
        if after == "0":  # a reader from the start has seen nothing: no round trip
            return False
        done = self.redis.hget(fence_key(job_id), "done")
        return done is not None and _stream_id(after) >= _stream_id(_text(done))

    def read(self, job_id: str, after: str = "0", *, block_ms: int | None = None) -> list[Event]:
        """The events after stream id `after`, waiting up to `block_ms` for the first."""
        answer: Any = self.redis.xread({key(job_id): after}, count=500, block=block_ms)
        events = []
        for _stream, entries in answer or []:
            for entry_id, raw in entries:
                fields = {_text(name): _text(value) for name, value in raw.items()}
                events.append(
                    Event(id=_text(entry_id), type=fields["type"], data=json.loads(fields["data"]))
                )
        return events


def announce_end(
    session: Session,
    events: JobEvents,
    job_id: str,
    *,
    webhooks: WebhookSender,
    ended: Job | None = None,
) -> bool:
    """Appends a finished job's `done` (carrying the row, so a wait answers from it), queues its
    `completed` webhook, and records both done; False when the job is not finished or Redis is
    unreachable. Whoever ends a job calls it, the reconciler again for an announcer that died or
    lost Redis: the fence keeps one `done`; a webhook queued twice keeps its `webhook-id`."""
    job = ended if ended is not None else session.get(Job, job_id, populate_existing=True)
    if job is None or not job.job_status.terminal:
        return False
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    row = {name: _json_value(getattr(job, name)) for name in _DONE_COLUMNS}
    data = {"status": job.status, "error": error, "job": row}
    appended = events.publish(job_id, DONE, data, attempt=job.attempts)
    if appended is Append.UNREACHABLE:
        return False
    if appended is Append.APPENDED:  # the fence lets one `done` through: the job counts once
        metrics.job_finished(job.status, job.error_code)
    if not announce(session, job_id, COMPLETED, webhooks):
        return False
    mark_done_announced(session, job_id)
    return True


# What a `done` carries of the row: all an answer shows, not the pipeline's inputs (the history
# and options it was given) nor the lease.
_DONE_COLUMNS = tuple(
    column.key
    for column in Job.__table__.columns
    if column.key not in ("history", "options", "lease_owner", "lease_expires_at")
)
_TIMES = frozenset(
    column.key for column in Job.__table__.columns if isinstance(column.type, UTCDateTime)
)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def finished_row(done: Event) -> Job | None:
    """The finished row a `done` event carries, detached; None for a `done` made without it."""
    row = done.data.get("job")
    if row is None:
        return None
    # Only the columns this release knows: a newer worker's `done` may carry more.
    return Job(
        **{
            name: datetime.fromisoformat(value) if name in _TIMES and value else value
            for name, value in row.items()
            if name in _DONE_COLUMNS
        }
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
