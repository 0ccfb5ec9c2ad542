"""The quick word that a running job was asked to stop: a Redis key the worker reads at its
token, sentence and stage boundaries.

Reading the row on every token would cost a query per token; a key costs one Redis GET, and the
worker reads it at most every `CHECK_SECONDS`. The row's `cancel_requested` stays the truth: the
worker's lease keeper reads it at every renewal, so a lost key (Redis restarted) delays the stop
by a heartbeat, never loses it.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError

_LOGGER = logging.getLogger(__name__)

KEY_PREFIX = "voicechat:cancel:"
# How often a running attempt looks at its key at most: a stop within a tenth of a second.
CHECK_SECONDS = 0.1


def key(job_id: str) -> str:
    """Returns the key that says job `job_id` was asked to stop."""
    return f"{KEY_PREFIX}{job_id}"


def raise_flag(redis: Redis, job_id: str, *, ttl_seconds: int) -> bool:
    """Tells the job's worker to stop, for `ttl_seconds` (longer than the job may still run).

    Returns:
        Whether the key was set; a failure is logged, and the worker learns it from the row.
    """
    try:
        redis.set(key(job_id), "1", ex=ttl_seconds)
    except (RedisError, OSError) as error:
        _LOGGER.warning("cancel signal not sent job_id=%s error=%s", job_id, type(error).__name__)
        return False
    return True


def is_raised(redis: Redis, job_id: str) -> bool:
    """Whether job `job_id` was asked to stop.

    Raises:
        RedisError: Redis is unreachable; the caller goes on (the row is the truth).
    """
    return bool(redis.exists(key(job_id)))
