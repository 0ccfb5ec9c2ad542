"""The job table and its transitions, on SQLite and (with TEST_DATABASE_URL) PostgreSQL."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from models import queries, transitions
from models.db import GroupCommit, make_engine, make_session_factory, write_turn
from models.errors import InvalidCursor
from models.tables import Job, JobStatus, Stage, utcnow
from models.transitions import ClaimOutcome, Lease
from tests.conftest import ROOT


def _alembic(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


def test_migrations_upgrade_and_downgrade_cleanly(database_url: str) -> None:
    command.upgrade(_alembic(database_url), "head")
    engine = make_engine(database_url)
    assert "jobs" in inspect(engine).get_table_names()
    command.downgrade(_alembic(database_url), "base")
    assert "jobs" not in inspect(engine).get_table_names()
    command.upgrade(_alembic(database_url), "head")
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from models.tables import Base

    command.upgrade(_alembic(database_url), "head")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.fixture
def sessions(database_url: str):  # type: ignore[no-untyped-def]
    command.upgrade(_alembic(database_url), "head")
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _job(session, **values) -> Job:  # type: ignore[no-untyped-def]
    job = Job(reply_format="text", input_kind="text", input_text="hi", options={}, **values)
    session.add(job)
    session.commit()
    return job


def _claim(session, job_id: str, owner: str = "host:1", lease: int = 30):  # type: ignore[no-untyped-def]
    return transitions.claim(session, job_id, owner=owner, lease_seconds=lease, max_attempts=3)


def test_a_job_is_claimed_exactly_once(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        won = _claim(session, job.id)
        assert won.outcome is ClaimOutcome.CLAIMED and won.lease == Lease(job.id, "host:1", 1)
        assert _claim(session, job.id, owner="host:2") == transitions.Claim(ClaimOutcome.TAKEN)
        session.refresh(job)
        assert (job.status, job.attempts, job.lease_owner) == ("running", 1, "host:1")
        assert job.started_at is not None and job.started_at.tzinfo is not None


def test_an_expired_lease_is_claimed_again_until_attempts_run_out(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        first = _claim(session, job.id, owner="a:1", lease=-1).lease
        assert transitions.set_stage(session, first, Stage.GENERATING, transcript="hello")
        assert queries.expired_leases(session) == [(job.id, 1)]
        second = _claim(session, job.id, owner="b:1", lease=-1).lease
        assert second == Lease(job.id, "b:1", 2)
        # The first attempt lost its lease: none of its writes lands.
        assert transitions.succeed(session, first, reply_text="stale") is False
        assert transitions.fail(session, first, "timeout", "stale") is False
        assert transitions.set_stage(session, first, Stage.SYNTHESIZING) is False
        assert transitions.renew_lease(session, first, 30) is False
        assert _claim(session, job.id, owner="c:1", lease=-1).outcome is ClaimOutcome.CLAIMED
        assert _claim(session, job.id, owner="d:1").outcome is ClaimOutcome.EXHAUSTED
        session.refresh(job)
        assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 3)
        assert job.transcript == "hello" and job.reply_text is None


def test_the_same_holder_on_a_later_attempt_is_a_different_lease(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        first = _claim(session, job.id, owner="a:1", lease=-1).lease
        again = _claim(session, job.id, owner="a:1").lease
        assert (first.attempt, again.attempt) == (1, 2)  # type: ignore[union-attr]
        assert transitions.fail(session, first, "timeout", "stale") is False
        assert transitions.succeed(session, again, reply_text="fresh") is True


def test_leases_are_renewed_and_released(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        lease = _claim(session, job.id, owner="a:7:1", lease=-1).lease
        assert transitions.renew_lease(session, Lease(job.id, "b:7:1", 1), 30) is False
        assert transitions.renew_lease(session, lease, 30) is True
        assert queries.expired_leases(session) == []
        # Renewed since it was found expired: the release re-checks expiry and keeps it.
        assert transitions.release_expired(session, job.id, 1) is False
        assert transitions.release_held_by(session, job.id, "b:7:") is None
        assert transitions.release_held_by(session, job.id, "a:7:") == 1
        session.refresh(job)
        assert (job.status, job.lease_owner, job.attempts) == ("queued", None, 1)


def test_an_expired_lease_is_released_only_for_the_attempt_found(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        _claim(session, job.id, owner="a:1", lease=-1)
        [(found, attempt)] = queries.expired_leases(session)
        _claim(session, job.id, owner="b:1", lease=-1)  # a second attempt took it meanwhile
        assert transitions.release_expired(session, found, attempt) is False
        assert transitions.release_expired(session, found, attempt + 1) is True


def test_lease_times_come_from_the_database_clock(sessions, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A host whose clock runs an hour ahead claims and renews; another host's reconciler must
    # still see a live lease, and see it expire only by the database's clock.
    import models.queries
    import models.tables

    real_now = models.tables.utcnow
    for module in (models.tables, models.transitions, models.queries):
        monkeypatch.setattr(
            module, "utcnow", lambda: real_now() + timedelta(hours=1), raising=False
        )
    with sessions() as session:
        job = _job(session, created_at=real_now())
        lease = _claim(session, job.id, owner="fast:1", lease=30).lease
        assert queries.expired_leases(session) == []
        session.refresh(job)
        assert job.lease_expires_at is not None
        ahead = job.lease_expires_at - real_now()
        assert timedelta(seconds=25) < ahead < timedelta(seconds=35), ahead
        assert transitions.renew_lease(session, lease, -1)
        assert queries.expired_leases(session) == [(job.id, 1)]


def test_stages_checkpoint_and_finish(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        lease = _claim(session, job.id).lease
        transitions.set_stage(session, lease, Stage.GENERATING, transcript="hello")
        session.refresh(job)
        assert (job.stage, job.transcript) == ("generating", "hello")
        assert transitions.succeed(session, lease, reply_text="hi there") is True
        session.refresh(job)
        assert (job.status, job.stage, job.reply_text) == ("succeeded", None, "hi there")
        assert job.finished_at is not None and job.started_at is not None
        assert job.finished_at >= job.started_at
        # A terminal job never changes again, whoever asks.
        assert transitions.fail(session, lease, "late", "too late") is False
        assert transitions.fail_held_by(session, job.id, "host:", "late", "too late") is False
        assert transitions.fail_unclaimed(session, job.id, "late", "too late") is False
        session.refresh(job)
        assert job.status == "succeeded" and job.error_code is None


def test_failure_records_code_and_message(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        assert transitions.fail_unclaimed(session, job.id, "broker_unavailable", "No queue.")
        session.refresh(job)
        assert (job.status, job.error_code, job.error_message) == (
            "failed",
            "broker_unavailable",
            "No queue.",
        )
        assert job.finished_at is not None
        other = _job(session)
        lease = _claim(session, other.id).lease
        assert transitions.fail_unclaimed(session, other.id, "x", "claimed") is False
        assert transitions.fail(session, lease, "no_speech", "No speech.") is True


def test_a_parent_fails_only_what_its_own_children_hold(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        job = _job(session)
        _claim(session, job.id, owner="host:10:11")
        assert transitions.fail_held_by(session, job.id, "host:1:", "timeout", "x") is False
        assert transitions.fail_held_by(session, job.id, "host:10:", "timeout", "x") is True


def test_listing_is_newest_first_and_pages_without_gaps(sessions) -> None:  # type: ignore[no-untyped-def]
    base = utcnow()
    with sessions() as session:
        made = [_job(session, created_at=base + timedelta(seconds=i // 2)) for i in range(7)]
        transitions.fail_unclaimed(session, made[0].id, "x", "y")
        seen, cursor = [], None
        while True:
            page = queries.list_jobs(session, owner=None, status=None, limit=3, cursor=cursor)
            seen += [job.id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
        assert seen == [job.id for job in expected]
        failed = queries.list_jobs(
            session, owner=None, status=JobStatus.FAILED, limit=10, cursor=None
        )
        assert [job.id for job in failed.jobs] == [made[0].id]


@pytest.mark.parametrize("cursor", ["!!!", "bm90IGEgY3Vyc29y", "MjAyNi0xMS0yMnxhYmM"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        queries.decode_cursor(cursor)


def test_a_worker_stuck_inside_a_write_cannot_hold_the_row_for_ever(database_url: str) -> None:
    # A worker frozen between its UPDATE and its COMMIT (SIGSTOP, a paused VM) holds the job's
    # row lock; the server ends its session after the hold limit, and the release goes through.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer per database: the limit is PostgreSQL's")
    command.upgrade(_alembic(database_url), "head")
    stuck_engine = make_engine(database_url, hold_limit_seconds=1)
    other_engine = make_engine(database_url)
    try:
        with make_session_factory(other_engine)() as session:
            job_id = _job(session).id
            lease = _claim(session, job_id, owner="frozen:1:2", lease=-1).lease
        stuck = make_session_factory(stuck_engine)()
        assert transitions.renew_lease(stuck, lease, 30) is True  # committed, then:
        stuck.execute(text("UPDATE jobs SET stage = 'generating' WHERE id = :id"), {"id": job_id})
        # ...the worker freezes here, its transaction open and the row locked.
        with make_session_factory(other_engine)() as session:
            session.execute(text("SET lock_timeout = '10s'"))
            assert transitions.release_held_by(session, job_id, "frozen:1:") == 1
        with pytest.raises(DBAPIError):  # thawed, it finds its session gone
            stuck.commit()
        stuck.close()
    finally:
        stuck_engine.dispose()
        other_engine.dispose()


def test_sqlite_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    """A writer's turn holds off another process's writer (a forked one's too, whose parent
    opened the lock before the fork), which enters once the turn is let go."""
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    fork = multiprocessing.get_context("fork")
    trying, entered = fork.Event(), fork.Event()

    def other_writer() -> None:
        trying.set()
        with write_turn(engine):
            entered.set()

    with write_turn(engine):
        child = fork.Process(target=other_writer)
        child.start()
        assert trying.wait(10)
        assert not entered.wait(0.5)
    assert entered.wait(10)
    child.join(10)
    assert child.exitcode == 0
    engine.dispose()


def _batched(tmp_path: Path, ids: list[int]) -> tuple[list[object], list[int], int]:
    """Writes row 0, then `ids` while it is held up, so that they wait as one batch: what each
    write answered, the rows kept, and the commits made."""
    engine = make_engine(f"sqlite:///{tmp_path / 'group.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    commits = []
    event.listen(engine, "commit", lambda _connection: commits.append(1))
    writer = GroupCommit(engine)
    started, go = threading.Event(), threading.Event()

    def insert(row: int, wait: bool = False) -> int:
        def write(connection: Connection) -> int:
            started.set()
            if wait:
                go.wait(10)
            connection.execute(text("INSERT INTO t VALUES (:id)"), {"id": row})
            return row

        return writer.run(write)

    def answer(row: int) -> object:
        try:
            return insert(row)
        except IntegrityError as error:
            return error

    with ThreadPoolExecutor(len(ids) + 1) as pool:
        first = pool.submit(insert, 0, True)
        assert started.wait(10)
        answers = [pool.submit(answer, row) for row in ids]
        while writer._waiting.qsize() < len(ids):
            time.sleep(0.01)
        go.set()
        assert first.result(10) == 0
        results = [answer.result(10) for answer in answers]
    with engine.connect() as connection:
        kept = list(connection.scalars(text("SELECT id FROM t ORDER BY id")))
    engine.dispose()
    return results, kept, len(commits)


def test_sqlite_group_commit_writes_those_waiting_in_one_transaction(tmp_path: Path) -> None:
    results, kept, commits = _batched(tmp_path, list(range(1, 11)))
    assert results == list(range(1, 11))
    assert kept == list(range(11))
    assert commits == 2  # row 0's, then the ten waiting behind it


def test_sqlite_group_commit_writes_a_failed_batch_again_one_by_one(tmp_path: Path) -> None:
    results, kept, _ = _batched(tmp_path, [1, 2, 0, 3])  # row 0 is there already
    assert results[:2] == [1, 2] and results[3] == 3
    assert isinstance(results[2], IntegrityError)
    assert kept == [0, 1, 2, 3]


def test_sqlite_group_commit_thread_ends_with_its_owner(tmp_path: Path) -> None:
    def writers() -> int:
        return sum(thread.name == "group-commit" for thread in threading.enumerate())

    before = writers()
    engine = make_engine(f"sqlite:///{tmp_path / 'owner.db'}")
    commits = GroupCommit(engine)
    assert commits.run(lambda connection: connection.execute(text("SELECT 1")).scalar()) == 1
    assert writers() == before + 1
    del commits
    gc.collect()
    for _ in range(100):
        if writers() == before:
            break
        time.sleep(0.05)
    assert writers() == before
    engine.dispose()
