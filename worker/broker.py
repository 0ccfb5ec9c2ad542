"""The worker's Redis transport: kombu's, with one Redis client per channel instead of one per
command it sends itself.

kombu's Redis channel makes a new client (redis-py's `Redis`, which copies its table of reply
callbacks as it starts) for every message it takes and acknowledges and every event it
publishes: five a job, with Celery's task events on for Flower (received, started, succeeded).
Selected by `broker_transport` in worker/celery_app.py.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _client_made: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own, made once by kombu already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        made = self._client_made
        # A client of a pool kombu has since replaced (after a lost connection) is made anew.
        if made is None or made.connection_pool is not self.pool:
            made = self._client_made = super()._create_client()  # type: ignore[no-untyped-call]
        return made


class Transport(redis.Transport):
    Channel = Channel
