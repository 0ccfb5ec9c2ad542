"""Worker liveness in Redis: a registry of live workers, each entry expiring unless renewed."""

# A worker's id sits in one sorted set scored by its expiry (Redis's clock, not the hosts'), its
# report in a key expiring with it. `/readyz` reads the set, pruned by score: one read, unlike
# Celery's `inspect().ping()` (waits a full timeout) or a keyspace scan (a stream per job).

from __future__ import annotations

import json
from typing import Any

from redis import Redis

KEY_PREFIX = "voicechat:worker:"
REGISTRY = "voicechat:workers"


def _server_now(client: Redis) -> float:
    """Redis's clock, in seconds: every host scores and prunes by the same one."""
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


def publish(client: Redis, worker_id: str, info: dict[str, Any], ttl_seconds: int) -> None:
    """Records that a worker is alive and what it has loaded; the entry expires unless renewed."""
    expires = _server_now(client) + ttl_seconds
    with client.pipeline() as pipe:  # MULTI: the entry and its report change together
        pipe.set(KEY_PREFIX + worker_id, json.dumps(info, sort_keys=True), ex=ttl_seconds)
        pipe.zadd(REGISTRY, {worker_id: expires})
        pipe.execute()


def withdraw(client: Redis, worker_id: str) -> None:
    """Removes a worker's entry at shutdown, so readiness drops at once."""
    with client.pipeline() as pipe:
        pipe.zrem(REGISTRY, worker_id)
        pipe.delete(KEY_PREFIX + worker_id)
        pipe.execute()


def live_workers(client: Redis) -> list[dict[str, Any]]:
    """The report of every worker whose entry has not expired, by worker id (pruned by score: a
    worker renewing meanwhile has a later score, or adds itself back)."""
    now = _server_now(client)
    with client.pipeline() as pipe:
        pipe.zremrangebyscore(REGISTRY, "-inf", now)
        pipe.zrange(REGISTRY, 0, -1)
        _, members = pipe.execute()
    if not members:
        return []
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    reports = client.mget([KEY_PREFIX + worker_id for worker_id in ids])
    workers = []
    for raw in reports:
        if raw is None:
            continue  # its report expired a moment before its score
        try:
            info = json.loads(raw)
        except ValueError:
            continue
        if isinstance(info, dict):
            workers.append(info)
    return sorted(workers, key=lambda info: str(info.get("worker_id", "")))


def ready(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers (as `live_workers` reports them) with their models loaded: they take jobs."""
    return [info for info in workers if info.get("models_loaded")]
