"""The OpenAI routes' bounded wait (issue 20): never longer than OPENAI_WAIT_SECONDS, and refused
at once, before any job is made, when the queue ahead puts the bound out of reach.

The stack tests run the API with no worker (`harness.stack.api_only`): every job stays queued, so
the queue is as long as a test makes it, and no job can finish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from api import create_app
from api.wait_bound import SHORTEST_RETRY_SECONDS, UNKNOWN_JOB_SECONDS, QueueAhead, queue_ahead
from harness.stack import Stack, api_only
from models import heartbeat
from models.tables import InputKind, Job, JobStatus, ReplyFormat, new_job_id, utcnow
from scripts.launch import migrate
from tests.conftest import make_settings, tone, wav_bytes

CHAT_MODEL = "SmolLM2-135M-Instruct"
CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello there."}
# Room for a slow, shared 2-core machine: an answer "at once" comes well within this, and one
# "at the bound" comes after the bound and within it plus this.
MARGIN_SECONDS = 30.0


def test_retry_after_is_when_the_queue_should_be_down_to_the_bound() -> None:
    assert QueueAhead(jobs=30, job_seconds=3.0, workers=1).retry_after(60) == 30
    assert QueueAhead(jobs=30, job_seconds=3.0, workers=2).seconds == 45.0
    # Never shorter than a short pause, never longer than the bound.
    assert QueueAhead(jobs=21, job_seconds=3.0, workers=1).retry_after(60) == 5
    assert QueueAhead(jobs=1000, job_seconds=3.0, workers=1).retry_after(60) == 60
    assert QueueAhead(jobs=0, job_seconds=3.0, workers=1).retry_after(3) == SHORTEST_RETRY_SECONDS


def _job(status: JobStatus, run_seconds: float | None = None) -> Job:
    now = utcnow()
    job = Job(
        id=new_job_id(),
        status=status.value,
        reply_format=ReplyFormat.TEXT.value,
        input_kind=InputKind.TEXT.value,
        input_text="hi",
        created_at=now,
    )
    if run_seconds is not None:
        job.started_at, job.finished_at = now - timedelta(seconds=run_seconds), now
    return job


def test_the_estimate_is_the_queue_by_the_median_recent_run_per_ready_worker(
    tmp_path: Path, redis_server: str
) -> None:
    url = f"sqlite:///{tmp_path / 'voicechat.db'}"
    migrate(url)
    # A database of the shared Redis of its own: no other test's workers are counted here.
    redis_url = redis_server.rsplit("/", 1)[0] + "/5"
    app = create_app({"settings": make_settings(tmp_path, DATABASE_URL=url, REDIS_URL=redis_url)})
    sessions = app.extensions["voicechat.sessions"]
    redis = app.extensions["voicechat.redis"]
    redis.flushdb()
    with app.app_context():
        unknown = queue_ahead(60)
    assert (unknown.jobs, unknown.job_seconds, unknown.workers) == (0, UNKNOWN_JOB_SECONDS, 1)

    with sessions() as session:
        session.add_all(_job(JobStatus.SUCCEEDED, seconds) for seconds in (1, 2, 3, 4, 100))
        session.add_all([_job(JobStatus.FAILED, 500), _job(JobStatus.CANCELED, 500)])
        session.add_all(_job(JobStatus.QUEUED) for _ in range(30))
        session.add(_job(JobStatus.RUNNING))
        session.commit()
    ready = {"w1": True, "w2": True, "loading": False}
    for worker_id, loaded in ready.items():
        info = {"worker_id": worker_id, "models_loaded": loaded}
        heartbeat.publish(redis, worker_id, info, ttl_seconds=60)
    try:
        with app.app_context():
            ahead = queue_ahead(60)
            # Counted only as far as twice the bound of work: 2 * 10 s * 2 workers / 3 s, + 1.
            capped = queue_ahead(10)
    finally:
        for worker_id in ready:
            heartbeat.withdraw(redis, worker_id)
    assert (ahead.jobs, ahead.job_seconds, ahead.workers) == (30, 3.0, 2)
    assert ahead.seconds == 45.0
    assert capped.jobs == 14 and capped.retry_after(10) == 10


def test_the_document_declares_the_bound_and_its_503s(open_client_with: Any) -> None:
    document = open_client_with(OPENAI_WAIT_SECONDS="45").get("/openapi.json").json
    for path in ("/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/speech"):
        operation = document["paths"][path]["post"]
        assert "OPENAI_WAIT_SECONDS (45 s here)" in operation["description"], path
        unavailable = operation["responses"]["503"]
        assert "Retry-After" in unavailable["headers"], path
        assert "`wait_too_long`" in unavailable["description"], path
        assert "`wait_timeout`" in unavailable["description"], path
        assert "504" not in operation["responses"], path


def _jobs(stack: Stack) -> list[dict[str, Any]]:
    listing = stack.http.get(f"{stack.url}/v1/jobs?limit=100", timeout=30)
    assert listing.status_code == 200, listing.text
    return list(listing.json()["data"])


def _openai_503(response: requests.Response, code: str) -> int:
    """Checks an OpenAI-shaped 503 of `code`; returns its `Retry-After`."""
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "server_error"), error
    assert error["message"]
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    return int(retry_after)


def _requests(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each way of calling a route that waits for its job, whole and streamed."""
    recording = wav_bytes(tone(1.0), 16_000)
    return {
        "chat": {"url": "/v1/chat/completions", "json": CHAT},
        "chat, streamed": {"url": "/v1/chat/completions", "json": {**CHAT, "stream": True}},
        "speech": {"url": "/v1/audio/speech", "json": {**SPEECH, "response_format": "flac"}},
        "speech, streamed": {
            "url": "/v1/audio/speech",
            "json": {**SPEECH, "response_format": "wav"},
        },
        "transcription": {
            "url": "/v1/audio/transcriptions",
            "data": {"model": "whisper-1"},
            "files": {"file": ("tone.wav", recording, "audio/wav")},
        },
    }


def _send(stack: Stack, call: dict[str, Any]) -> tuple[requests.Response, float]:
    """Sends one request; returns its answer (read whole) and the seconds it took."""
    url = stack.url + call["url"]
    fields = {k: v for k, v in call.items() if k != "url"}
    started = time.monotonic()
    response = stack.http.post(url, timeout=120, **fields)
    return response, time.monotonic() - started


@pytest.fixture(scope="module")
def long_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API on its default bound (60 s) and no worker, behind 40 queued jobs: with no job
    finished yet to go by, 10 s each, 400 s of work for the one worker counted."""
    with api_only(tmp_path_factory.mktemp("long-queue")) as stack:
        for n in range(40):
            stack.submit(json={"text": f"Question {n}?"})
        yield stack


@pytest.mark.e2e
def test_behind_a_long_queue_each_route_answers_503_at_once_and_makes_no_job(
    long_queue: Stack,
) -> None:
    before = _jobs(long_queue)
    assert len(before) == 40
    for name, call in _requests(long_queue).items():
        response, seconds = _send(long_queue, call)
        retry_after = _openai_503(response, "wait_too_long")
        # 400 s of work against a bound of 60: come back once it is down to 60, at most 60 s.
        assert retry_after == 60, (name, retry_after)
        assert seconds < MARGIN_SECONDS, (name, seconds)  # at once, not after the bound
        assert "X-Job-Id" not in response.headers, name
    assert _jobs(long_queue) == before  # nothing was made, and the queue is as it was


@pytest.mark.e2e
def test_the_openai_sdk_sees_the_503_and_its_retry_after(long_queue: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{long_queue.url}/v1", api_key=long_queue.secret, max_retries=0
    )
    before = len(_jobs(long_queue))
    with pytest.raises(openai.InternalServerError) as raised:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")
    assert raised.value.status_code == 503 and raised.value.code == "wait_too_long"
    assert raised.value.response.headers["Retry-After"] == "60"
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert raised.value.status_code == 503 and raised.value.code == "wait_too_long"
    assert len(_jobs(long_queue)) == before


BOUND_SECONDS = 3


@pytest.fixture(scope="module")
def short_bound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API with a bound of 3 s and no worker: a job made is never run."""
    with api_only(
        tmp_path_factory.mktemp("short-bound"), OPENAI_WAIT_SECONDS=str(BOUND_SECONDS)
    ) as stack:
        yield stack


@pytest.mark.e2e
def test_past_the_bound_the_answer_is_503_and_the_job_is_canceled(short_bound: Stack) -> None:
    for name, call in _requests(short_bound).items():
        known = {job["id"] for job in _jobs(short_bound)}
        response, seconds = _send(short_bound, call)
        _openai_503(response, "wait_timeout")
        assert BOUND_SECONDS <= seconds < BOUND_SECONDS + MARGIN_SECONDS, (name, seconds)
        made = [job for job in _jobs(short_bound) if job["id"] not in known]
        assert len(made) == 1, (name, made)
        job = made[0]
        assert job["id"] in response.json()["error"]["message"], name
        # Canceled while queued: no worker that receives its message later will run it.
        assert (job["status"], job["error"]["code"], job["attempts"]) == (
            "canceled",
            "canceled",
            0,
        ), (name, job)


@pytest.mark.e2e
def test_the_openai_sdk_sees_the_timeout_as_a_503(short_bound: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{short_bound.url}/v1", api_key=short_bound.secret, max_retries=0
    )
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert time.monotonic() - started >= BOUND_SECONDS
    assert raised.value.status_code == 503 and raised.value.code == "wait_timeout"
    assert raised.value.response.headers["Retry-After"].isdigit()
    assert all(job["status"] == "canceled" for job in _jobs(short_bound))
