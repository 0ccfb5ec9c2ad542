"""The quick word that a running job was asked to stop: a Redis key, read at most every
`CHECK_SECONDS` instead of a query per token. The row's `cancel_requested` stays the truth
(the lease keeper reads it): a lost key delays the stop by a heartbeat, never loses it.
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
    """Tells the job's worker to stop for `ttl_seconds`; a failure is logged and returns False."""
    try:
        redis.set(key(job_id), "1", ex=ttl_seconds)
    except (RedisError, OSError) as error:
        _LOGGER.warning("cancel signal not sent job_id=%s error=%s", job_id, type(error).__name__)
        return False
    return True


def is_raised(redis: Redis, job_id: str) -> bool:
    """Whether job `job_id` was asked to stop (on RedisError the caller goes on: the row rules)."""
    return bool(redis.exists(key(job_id)))
