"""Retention through the real maintenance worker (`-Q maintenance`, threads, no models): audio
expiry and the 410, row and conversation purges, orphaned files; on both file stores and both
databases. Rows are backdated past short TTLs, so nothing waits on the clock."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from celery import Celery
from redis import Redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from models import event_log, storage
from models.db import make_engine, make_session_factory
from models.queue import MAINTENANCE_QUEUE, RETENTION_TASK
from models.settings import Settings
from models.tables import (
    Conversation,
    IdempotencyRecord,
    Job,
    JobStatus,
    StoredFile,
    Turn,
    WebhookDelivery,
    new_job_id,
    utcnow,
)
from scripts.launch import MAINTENANCE_ENV, maintenance_command
from tests.conftest import ROOT, make_settings

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
TTLS = {
    "AUDIO_TTL_SECONDS": str(2 * 3600),
    "JOB_TTL_SECONDS": str(2 * 86400),
    "CONVERSATION_TTL_SECONDS": str(2 * 86400),
}


@dataclass
class Deployment:
    """A database, Redis, the file stores and a running maintenance worker."""

    settings: Settings
    sessions: sessionmaker[Session]
    uploads: storage.Store
    results: storage.Store
    redis: Redis
    worker: subprocess.Popen[bytes]
    log: Path
    sender: Celery

    def done_sweeps(self) -> int:
        return self.log.read_text(errors="replace").count("retention sweep done")

    def sweep(self, passes: int = 1) -> None:
        """Sends `passes` sweeps at once through the broker and waits until the worker says it
        finished them all (its log line comes after each pass's last write)."""
        before = self.done_sweeps()
        for _ in range(passes):
            self.sender.send_task(RETENTION_TASK, queue=MAINTENANCE_QUEUE)
        deadline = time.monotonic() + 120
        while self.done_sweeps() < before + passes:
            assert self.worker.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)
        assert "Traceback" not in self.log.read_text(), self.log.read_text()[-3000:]


@pytest.fixture(params=["local", "database"])
def deployment(
    request: pytest.FixtureRequest, database_url: str, redis_server: str, tmp_path: Path
) -> Iterator[Deployment]:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=database_url, configure_logger=False)
    command.upgrade(config, "head")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server,
        "STORAGE_BACKEND": str(request.param),
        **TTLS,
    }
    settings = make_settings(tmp_path, **env)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    log = tmp_path / "maintenance.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            maintenance_command(),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "DATA_DIR": str(tmp_path), **env, **MAINTENANCE_ENV},
        )  # fmt: skip
    sender = Celery("retention-test", broker=redis_server, set_as_current=False)
    try:
        yield Deployment(
            settings=settings,
            sessions=sessions,
            uploads=storage.open_store(settings, storage.UPLOADS, sessions),
            results=storage.open_store(settings, storage.RESULTS, sessions),
            redis=Redis.from_url(redis_server),
            worker=worker,
            log=log,
            sender=sender,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        sender.close()
        engine.dispose()


def _job(
    deployment: Deployment,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    age: timedelta = timedelta(0),
    voice: bool = True,
    conversation_id: str | None = None,
) -> str:
    """A job created and (when terminal) finished `age` ago, with a stored recording and, for a
    succeeded voice job, a reply and a sentence file its killed first attempt left."""
    job_id = new_job_id()
    when = utcnow() - age
    upload = deployment.uploads.write(storage.upload_name(job_id), b"RIFF upload")
    job = Job(
        id=job_id, status=status.value, reply_format="voice" if voice else "text",
        input_kind="audio", input_audio_file=upload, attempts=2, created_at=when,
        conversation_id=conversation_id,
        finished_at=when if status.terminal else None,
    )  # fmt: skip
    if status is JobStatus.SUCCEEDED and voice:
        deployment.results.write(storage.sentence_name(job_id, 1, 0), b"\0\0")
        job.reply_audio_file = deployment.results.write(storage.reply_name(job_id, 2), b"RIFF")
        job.reply_text = "Paris."
    with deployment.sessions() as session:
        session.add(job)
        session.commit()
    return job_id


def _row(deployment: Deployment, job_id: str) -> Job | None:
    with deployment.sessions() as session:
        return session.get(Job, job_id)


def _files(deployment: Deployment, job_id: str) -> list[str]:
    names = [
        (deployment.uploads, storage.upload_name(job_id)),
        (deployment.results, storage.reply_name(job_id, 2)),
        (deployment.results, storage.sentence_name(job_id, 1, 0)),
    ]
    return [name for store, name in names if store.exists(name)]


def test_expired_audio_is_deleted_the_job_kept_and_the_audio_answers_410(
    deployment: Deployment,
) -> None:
    old = _job(deployment, age=3 * HOUR)
    fresh = _job(deployment, age=HOUR)
    running = _job(deployment, JobStatus.RUNNING, age=3 * DAY)
    queued = _job(deployment, JobStatus.QUEUED, age=3 * DAY)
    assert len(_files(deployment, old)) == 3

    deployment.sweep(passes=2)  # two at once: the second finds nothing left, or does the same

    expired = _row(deployment, old)
    assert expired is not None and expired.expired_at is not None
    assert expired.reply_text == "Paris."  # the job and its text stay
    assert _files(deployment, old) == []
    assert len(_files(deployment, fresh)) == 3
    for job_id in (fresh, running, queued):
        row = _row(deployment, job_id)
        assert row is not None and row.expired_at is None
    assert _files(deployment, running) == [storage.upload_name(running)]
    assert _files(deployment, queued) == [storage.upload_name(queued)]

    client = create_app({"settings": deployment.settings}).test_client()
    shown = client.get(f"/v1/jobs/{old}").json
    assert shown is not None and shown["status"] == "succeeded"
    assert shown["result"]["audio_expired"] is True and shown["result"]["audio_url"] is None
    assert shown["result"]["text"] == "Paris."
    gone = client.get(f"/v1/jobs/{old}/audio")
    assert gone.status_code == 410 and gone.mimetype == "application/problem+json"
    assert gone.json is not None and gone.json["code"] == "audio_expired"
    kept = client.get(f"/v1/jobs/{fresh}").json
    assert kept is not None and kept["result"]["audio_expired"] is False
    assert client.get(kept["result"]["audio_url"]).status_code == 200


def test_old_jobs_and_idle_conversations_are_purged_with_everything_they_own(
    deployment: Deployment,
) -> None:
    with deployment.sessions() as session:
        idle, active, busy = (Conversation(created_at=utcnow() - 5 * DAY) for _ in range(3))
        session.add_all([idle, active, busy])
        session.commit()
        said = {"role": "user", "content": "hi"}
        session.add(Turn(conversation_id=idle.id, created_at=idle.created_at, **said))
        session.add(Turn(conversation_id=active.id, **said))  # today
        session.commit()
        conversations = (idle.id, active.id, busy.id)
    old = _job(deployment, age=3 * DAY, conversation_id=conversations[0])
    old_failed = _job(deployment, JobStatus.FAILED, age=3 * DAY, voice=False)
    recent = _job(deployment, age=DAY)
    running = _job(deployment, JobStatus.RUNNING, age=3 * DAY, conversation_id=conversations[2])
    with deployment.sessions() as session:
        session.add(IdempotencyRecord(scope="", key="k-old", fingerprint="f", job_id=old))
        # Keys whose first request died in flight: one past IDEMPOTENCY_TTL_SECONDS, one not.
        abandoned = {"scope": "", "fingerprint": "f", "job_id": None}
        session.add(IdempotencyRecord(key="k-dead", created_at=utcnow() - 2 * DAY, **abandoned))
        session.add(IdempotencyRecord(key="k-in-flight", **abandoned))
        session.add(WebhookDelivery(job_id=old, event="completed", message_id="m", attempt=1))
        session.commit()
    events = event_log.JobEvents(deployment.redis, ttl_seconds=3600)
    for job_id in (old, recent):
        events.publish(job_id, event_log.DONE, {"id": job_id}, attempt=1)
    assert deployment.redis.exists(event_log.key(old), event_log.fence_key(old)) == 2

    deployment.sweep()

    assert _row(deployment, old) is None and _row(deployment, old_failed) is None
    assert _files(deployment, old) == []
    assert deployment.redis.exists(event_log.key(old), event_log.fence_key(old)) == 0
    assert deployment.redis.exists(event_log.key(recent)) == 1
    with deployment.sessions() as session:
        assert list(session.scalars(select(IdempotencyRecord.key))) == ["k-in-flight"]
        assert session.scalars(select(WebhookDelivery)).all() == []
        left = set(session.scalars(select(Conversation.id)))
        turns = set(session.scalars(select(Turn.conversation_id)))
    assert left == {conversations[1], conversations[2]}  # a turn today; a job still running
    assert turns == {conversations[1]}
    recent_row, running_row = _row(deployment, recent), _row(deployment, running)
    assert recent_row is not None and recent_row.expired_at is not None  # audio only
    assert running_row is not None and running_row.status == "running"
    assert _files(deployment, running) == [storage.upload_name(running)]


def _age(deployment: Deployment, store: storage.Store, name: str, age: timedelta) -> None:
    """Makes a stored file look written `age` ago."""
    if isinstance(store, storage.LocalStore):
        when = (utcnow() - age).timestamp()
        os.utime(store.path(name), (when, when))
        return
    with deployment.sessions() as session:
        session.execute(
            update(StoredFile).where(StoredFile.name == name).values(created_at=utcnow() - age)
        )
        session.commit()


def _partial(folder: Path, name: str, age: timedelta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"half a wav")
    when = (utcnow() - age).timestamp()
    os.utime(path, (when, when))
    return path


def test_orphaned_and_partial_files_are_swept_and_fresh_ones_kept(
    deployment: Deployment,
) -> None:
    uploads, results = deployment.uploads, deployment.results
    lost, arriving = new_job_id(), new_job_id()  # no row: a crash, an upload in progress
    for job_id, age in ((lost, 2 * HOUR), (arriving, timedelta(minutes=5))):
        uploads.write(storage.upload_name(job_id), b"RIFF")
        _age(deployment, uploads, storage.upload_name(job_id), age)
    results.write(storage.reply_name(lost, 1), b"RIFF")
    _age(deployment, results, storage.reply_name(lost, 1), 2 * HOUR)
    live = _job(deployment, JobStatus.RUNNING, age=3 * HOUR)
    _age(deployment, uploads, storage.upload_name(live), 3 * HOUR)
    partial = deployment.settings.data_dir / (
        "uploads" if isinstance(uploads, storage.LocalStore) else "tmp"
    )
    crashed = _partial(partial, ".tmp-crashed.wav", 2 * HOUR)
    writing = _partial(partial, ".tmp-writing.wav", timedelta(minutes=1))

    deployment.sweep()

    assert not uploads.exists(storage.upload_name(lost))
    assert not results.exists(storage.reply_name(lost, 1))
    assert uploads.exists(storage.upload_name(arriving))
    assert uploads.exists(storage.upload_name(live))
    assert not crashed.exists() and writing.exists()


def test_a_maintenance_worker_refuses_the_job_queue(tmp_path: Path) -> None:
    # It has no models: on the job queue it would take jobs it cannot run.
    on_jobs = [part if part != "maintenance" else "voicechat" for part in maintenance_command()]
    done = subprocess.run(
        on_jobs, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0",
             **MAINTENANCE_ENV},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "WORKER_ROLE=maintenance loads no models" in done.stderr
