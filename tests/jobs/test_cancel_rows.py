"""Canceling at the row and the worker's watch: the transitions on a real database (SQLite and,
with TEST_DATABASE_URL, PostgreSQL), the reconciler and the cancel key on a real Redis."""

from __future__ import annotations

import pytest
from redis import Redis

from models import cancel_signal, event_log, transitions
from models.event_log import JobEvents
from models.tables import Conversation, Job, Turn
from models.transitions import ClaimOutcome, Lease
from tests.faults import test_reconciler
from tests.jobs import test_database
from tests.jobs.test_database import _claim, _job
from worker.lease_keeper import CancelWatch, Held
from worker.reconciler import reconcile

# The fixtures of the neighbouring tests: a migrated database's sessions, a flushed Redis.
sessions = test_database.sessions
broker = test_reconciler.broker


def _row(session, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def _running_in_a_conversation(session) -> tuple[Job, Lease]:  # type: ignore[no-untyped-def]
    conversation = Conversation()
    session.add(conversation)
    session.commit()
    job = _job(session, conversation_id=conversation.id)
    lease = _claim(session, job.id).lease
    assert lease is not None
    return job, lease


def test_a_queued_job_is_canceled_at_once_and_never_claimed(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        assert transitions.cancel_queued(session, job.id) is True
        canceled = _row(session, job.id)
        assert (canceled.status, canceled.error_code, canceled.attempts) == (
            "canceled",
            "canceled",
            0,
        )
        assert canceled.finished_at is not None and canceled.cancel_requested
        # The worker that receives its message later finds nothing to run.
        assert _claim(session, job.id).outcome is ClaimOutcome.TAKEN
        assert transitions.cancel_queued(session, job.id) is False
        assert transitions.request_cancel(session, job.id) is False
        assert _row(session, job.id).attempts == 0


def test_a_running_job_is_ended_by_its_holder_keeping_its_text_and_no_turn(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job, lease = _running_in_a_conversation(session)
        assert transitions.cancel_queued(session, job.id) is False  # running: not at once
        assert transitions.request_cancel(session, job.id) is True
        assert _row(session, job.id).status == "running"
        assert transitions.cancel_held(session, lease, reply_text="Once upon a") is True
        ended = _row(session, job.id)
        assert (ended.status, ended.reply_text, ended.lease_owner) == (
            "canceled",
            "Once upon a",
            None,
        )
        assert session.query(Turn).filter_by(conversation_id=job.conversation_id).count() == 0
        assert transitions.cancel_held(session, lease) is False  # once


def test_a_stop_asked_before_the_end_is_read_by_the_end_itself(sessions) -> None:  # type: ignore[no-untyped-def]
    # The worker makes no look of its own before `succeed`: the UPDATE reads the row's flag.
    with sessions() as session:
        job, lease = _running_in_a_conversation(session)
        assert transitions.request_cancel(session, job.id)
        for turns in ((), [("user", "Hi"), ("assistant", "Hello")]):
            with pytest.raises(transitions.CancelRequested):
                transitions.succeed(session, lease, turns=turns, reply_text="Hello")
            row = _row(session, job.id)
            assert (row.status, row.reply_text, row.lease_owner) == ("running", None, lease.owner)
        assert session.query(Turn).filter_by(conversation_id=job.conversation_id).count() == 0
        assert transitions.cancel_held(session, lease, reply_text="Hel") is True
        # A holder whose job ended otherwise is told its lease is gone, not asked to stop.
        assert transitions.succeed(session, lease, reply_text="Hello") is False


def test_a_holder_whose_lease_was_taken_cannot_write_canceled(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        stale = _claim(session, job.id, owner="a:1:1", lease=-1).lease
        fresh = _claim(session, job.id, owner="b:1:1").lease
        assert stale is not None and fresh == Lease(job.id, "b:1:1", 2)
        assert transitions.request_cancel(session, job.id) is True
        assert transitions.cancel_held(session, stale, reply_text="stale") is False
        row = _row(session, job.id)
        assert (row.status, row.lease_owner, row.reply_text) == ("running", "b:1:1", None)
        assert transitions.cancel_held(session, fresh) is True


def test_finished_jobs_are_not_asked_to_stop(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        lease = _claim(session, job.id).lease
        assert lease is not None and transitions.succeed(session, lease, reply_text="done")
        assert transitions.cancel_queued(session, job.id) is False
        assert transitions.request_cancel(session, job.id) is False
        assert not _row(session, job.id).cancel_requested


def test_a_job_asked_to_stop_whose_child_died_is_canceled_not_released(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        _claim(session, job.id, owner="host:7:8")
        assert transitions.request_cancel(session, job.id)
        assert transitions.release_held_by(session, job.id, "host:7:") is None
        assert transitions.cancel_held_by(session, job.id, "host:9:") is False
        assert transitions.cancel_held_by(session, job.id, "host:7:") is True
        assert (_row(session, job.id).status, _row(session, job.id).attempts) == ("canceled", 1)


def test_a_claimable_job_asked_to_stop_is_canceled_instead_of_run(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        _claim(session, job.id, owner="a:1:1", lease=-1)  # its worker is gone
        assert transitions.request_cancel(session, job.id)
        # A redelivered message finds the lease expired: it ends the job rather than run it.
        assert _claim(session, job.id, owner="b:1:1").outcome is ClaimOutcome.CANCELED
        assert (_row(session, job.id).status, _row(session, job.id).attempts) == ("canceled", 1)


def test_the_reconciler_cancels_an_expired_job_asked_to_stop(sessions, broker) -> None:  # type: ignore[no-untyped-def]
    published: list[str] = []
    events = JobEvents(broker, ttl_seconds=60)
    with sessions() as session:
        asked = _job(session)
        other = _job(session)
        for job_id in (asked, other):
            _claim(session, job_id.id, owner="w:1:1", lease=-5)
        assert transitions.request_cancel(session, asked.id)
        report = reconcile(
            session, broker, events, published.append, queue="voicechat",
            webhooks=test_reconciler._no_webhook, queued_after_seconds=30,
        )  # fmt: skip
        assert report.canceled == (asked.id,) and report.released == (other.id,)
        assert published == [other.id]  # the canceled job is not run again
        assert _row(session, asked.id).status == "canceled"
        assert _row(session, asked.id).done_announced
    kinds = [(event.type, event.data.get("status")) for event in events.read(asked.id)]
    assert kinds == [(event_log.DONE, "canceled")]


def test_the_watch_reads_the_key_at_most_every_tenth_of_a_second(broker: Redis) -> None:
    now = [100.0]
    held = Held(Lease("job-1", "w:1:1", 1))
    watch = CancelWatch(broker, held, clock=lambda: now[0])
    assert watch.requested() is False
    assert cancel_signal.raise_flag(broker, "job-1", ttl_seconds=60)
    assert watch.requested() is False  # looked a moment ago: not again yet
    now[0] += 0.2
    assert watch.requested() is True
    assert held.canceled.is_set()
    boundary = CancelWatch(broker, Held(Lease("job-1", "w:1:1", 1)), clock=lambda: now[0])
    assert boundary.requested() is True
    cancel_signal.raise_flag(broker, "job-3", ttl_seconds=60)
    third = CancelWatch(broker, Held(Lease("job-3", "w:1:1", 1)), clock=lambda: now[0])
    third.next_look = now[0] + 10
    assert third.requested() is False
    assert third.requested(now=True) is True  # a stage boundary looks whatever the time
    other = CancelWatch(broker, Held(Lease("job-2", "w:1:1", 1)), clock=lambda: now[0])
    assert other.requested() is False
    other.held.canceled.set()  # the lease keeper read the row's cancel_requested
    assert other.requested() is True


def test_the_watch_passes_a_token_when_redis_is_down() -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    watch = CancelWatch(unreachable, Held(Lease("job-1", "w:1:1", 1)))
    assert watch.requested() is False
