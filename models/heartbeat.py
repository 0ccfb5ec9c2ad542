"""Worker liveness in Redis: each worker process with its models loaded keeps a key alive.

`/readyz` reads these keys instead of asking Celery (`inspect().ping()` waits a full timeout for
replies), so readiness is one round trip.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

KEY_PREFIX = "voicechat:worker:"


def publish(client: Redis, worker_id: str, info: dict[str, Any], ttl_seconds: int) -> None:
    """Records that a worker is alive and what it has loaded; the key expires unless renewed."""
    client.set(KEY_PREFIX + worker_id, json.dumps(info, sort_keys=True), ex=ttl_seconds)


def withdraw(client: Redis, worker_id: str) -> None:
    """Removes a worker's key at shutdown, so readiness drops at once."""
    client.delete(KEY_PREFIX + worker_id)


def live_workers(client: Redis) -> list[dict[str, Any]]:
    """Returns the info of every worker whose key has not expired."""
    workers = []
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw is None:
            continue  # expired between SCAN and GET
        try:
            info = json.loads(raw)
        except ValueError:
            continue
        if isinstance(info, dict):
            workers.append(info)
    return sorted(workers, key=lambda info: str(info.get("worker_id", "")))
