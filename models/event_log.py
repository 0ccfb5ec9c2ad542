"""Each job's event log in a Redis Stream: the worker appends, the web process reads.

A stream rather than pub/sub because a subscriber that joins late (or reconnects with
`Last-Event-ID`) must still get what it missed, the final event above all. The log is a
convenience for live clients: the job row stays the truth, so a failed append is logged and
ignored, and readers fall back to the row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

_LOGGER = logging.getLogger(__name__)

KEY_PREFIX = "voicechat:events:"
# A reply streams one event per token; a cap keeps a runaway job from filling Redis.
MAX_EVENTS = 10_000

STATUS = "status"  # queued / running (with the attempt), as the row changes
STAGE = "stage"  # transcribing / generating / synthesizing
TRANSCRIPT = "transcript"  # what the recogniser heard
DELTA = "delta"  # a piece of reply text as the language model produces it
AUDIO = "audio"  # the spoken reply is stored
DONE = "done"  # the job reached a terminal status; always the last event


@dataclass(frozen=True)
class Event:
    """One entry of a job's log; `id` is the stream id, usable as SSE's `Last-Event-ID`."""

    id: str
    type: str
    data: dict[str, Any]


def key(job_id: str) -> str:
    """Returns the stream key of a job."""
    return f"{KEY_PREFIX}{job_id}"


class JobEvents:
    """Appends to and reads the per-job streams."""

    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    def publish(self, job_id: str, event_type: str, **data: Any) -> None:
        """Appends an event; a Redis failure is logged, never raised (the row is the truth)."""
        fields = {"type": event_type, "data": json.dumps(data, separators=(",", ":"))}
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key(job_id), fields, maxlen=MAX_EVENTS, approximate=True)  # type: ignore[arg-type]
                pipe.expire(key(job_id), self.ttl_seconds)
                pipe.execute()
        except (RedisError, OSError) as error:
            _LOGGER.warning(
                "event not published job_id=%s type=%s error=%s",
                job_id,
                event_type,
                type(error).__name__,
            )

    def read(self, job_id: str, after: str = "0", *, block_ms: int | None = None) -> list[Event]:
        """Returns the events after stream id `after`, waiting up to `block_ms` for the first.

        Raises:
            RedisError: Redis is unreachable; the caller falls back to the job row.
        """
        answer: Any = self.redis.xread({key(job_id): after}, count=500, block=block_ms)
        events = []
        for _stream, entries in answer or []:
            for entry_id, raw in entries:
                fields = {_text(name): _text(value) for name, value in raw.items()}
                events.append(
                    Event(id=_text(entry_id), type=fields["type"], data=json.loads(fields["data"]))
                )
        return events


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
