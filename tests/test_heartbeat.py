"""Our own Redis code for worker readiness (fakeredis: a unit test of our code, not a broker)."""

from __future__ import annotations

import fakeredis

from models import heartbeat


def test_published_workers_are_listed_and_withdrawn() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "b:2", {"worker_id": "b:2", "models_loaded": True}, ttl_seconds=30)
    heartbeat.publish(client, "a:1", {"worker_id": "a:1", "models_loaded": False}, ttl_seconds=30)
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["a:1", "b:2"]
    heartbeat.withdraw(client, "a:1")
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["b:2"]


def test_keys_expire_unless_renewed() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "a:1", {"worker_id": "a:1"}, ttl_seconds=30)
    assert 0 < client.ttl(heartbeat.KEY_PREFIX + "a:1") <= 30


def test_garbage_under_the_prefix_is_ignored() -> None:
    client = fakeredis.FakeRedis()
    client.set(heartbeat.KEY_PREFIX + "x", b"not json")
    client.set(heartbeat.KEY_PREFIX + "y", b"[1, 2]")
    assert heartbeat.live_workers(client) == []
