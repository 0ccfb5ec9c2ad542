"""The worker's Redis transport (worker/broker.py): kombu's, sending on one client a channel."""

from __future__ import annotations

from kombu import Connection

from worker.broker import Transport
from worker.celery_app import app


def test_the_worker_selects_it() -> None:
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)


def test_a_channel_sends_on_one_client_until_its_pool_is_replaced(redis_server: str) -> None:
    with Connection(redis_server, transport=Transport) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first and first.ping()
        channel._disconnect_pools()  # what kombu does with a connection it lost
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool and again.ping()


def test_messages_go_and_come_through_it(redis_server: str) -> None:
    with Connection(redis_server, transport=Transport) as connection:
        queue = connection.SimpleQueue("voicechat-test-broker")
        try:
            for n in range(3):
                queue.put({"n": n})
            taken = [queue.get(timeout=5) for _ in range(3)]
            for message in taken:
                message.ack()
            assert [message.payload["n"] for message in taken] == [0, 1, 2]
        finally:
            queue.clear()
            queue.close()
