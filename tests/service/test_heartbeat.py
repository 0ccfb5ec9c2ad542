"""Our own Redis code for worker readiness (fakeredis: a unit test of our code, not a broker)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from models import heartbeat


def test_published_workers_are_listed_and_withdrawn() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "b:2", {"worker_id": "b:2", "models_loaded": True}, ttl_seconds=30)
    heartbeat.publish(client, "a:1", {"worker_id": "a:1", "models_loaded": False}, ttl_seconds=30)
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["a:1", "b:2"]
    heartbeat.withdraw(client, "a:1")
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["b:2"]
    assert client.zrange(heartbeat.REGISTRY, 0, -1) == [b"b:2"]


def test_entries_expire_unless_renewed() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "a:1", {"worker_id": "a:1"}, ttl_seconds=30)
    assert 0 < client.ttl(heartbeat.KEY_PREFIX + "a:1") <= 30
    seconds, micros = client.time()
    score = client.zscore(heartbeat.REGISTRY, "a:1")
    assert score is not None and 29 < score - (seconds + micros / 1e6) <= 30


def test_expired_entries_are_pruned_on_read() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "a:1", {"worker_id": "a:1"}, ttl_seconds=30)
    heartbeat.publish(client, "b:2", {"worker_id": "b:2"}, ttl_seconds=30)
    client.zadd(heartbeat.REGISTRY, {"b:2": 1.0})  # b:2 stopped renewing long ago
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["a:1"]
    assert client.zrange(heartbeat.REGISTRY, 0, -1) == [b"a:1"]


def test_readiness_never_scans_the_keyspace(monkeypatch: pytest.MonkeyPatch) -> None:
    client = fakeredis.FakeRedis()
    for job in range(500):  # event streams and the like, which grow with history
        client.set(f"voicechat:events:{job}", b"x")
    heartbeat.publish(client, "a:1", {"worker_id": "a:1"}, ttl_seconds=30)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("readiness must not scan the keyspace")

    monkeypatch.setattr(client, "scan", refuse)
    monkeypatch.setattr(client, "scan_iter", refuse)
    monkeypatch.setattr(client, "keys", refuse)
    assert [w["worker_id"] for w in heartbeat.live_workers(client)] == ["a:1"]


def test_garbage_reports_are_ignored() -> None:
    client = fakeredis.FakeRedis()
    heartbeat.publish(client, "x", {"worker_id": "x"}, ttl_seconds=30)
    heartbeat.publish(client, "y", {"worker_id": "y"}, ttl_seconds=30)
    client.set(heartbeat.KEY_PREFIX + "x", b"not json")
    client.set(heartbeat.KEY_PREFIX + "y", b"[1, 2]")
    client.delete(heartbeat.KEY_PREFIX + "z")
    client.zadd(heartbeat.REGISTRY, {"z": 1e12})  # registered, its report gone
    assert heartbeat.live_workers(client) == []
