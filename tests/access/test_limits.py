"""Fair sharing on the app with a real Redis and database: rate limits per caller (429 and the
RateLimit headers, OpenAI's error on its routes), unfinished-job quotas, the full queue's 503."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from redis import Redis
from sqlalchemy import func, select, update
from werkzeug.serving import make_server

from api import create_app
from harness.stack import free_port
from models.api_keys import create_key
from models.db import make_engine, make_session_factory
from models.tables import Job, JobStatus, utcnow
from scripts.launch import migrate
from tests.conftest import make_settings

PROBLEM = "application/problem+json"
CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}


class LimitedApp:
    """The app on a fresh database and an emptied Redis database, and its rows."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.redis_url = redis_url
        self.engine = make_engine(database_url)
        self.sessions = make_session_factory(self.engine)
        self.secrets: dict[str, str] = {}

    def app(self, **env: str) -> Flask:
        settings = make_settings(
            self.tmp_path, DATABASE_URL=self.database_url, REDIS_URL=self.redis_url, **env
        )
        return create_app({"settings": settings})

    def key(self, **limits: int | None) -> str:
        """Makes an API key with the given overrides, as `flask keys create` does; returns its
        id (`auth` gives the header that sends its secret)."""
        with self.sessions() as session:
            made = create_key(session, "test", **limits)
            self.secrets[made.row.id] = made.secret
            return made.row.id

    def auth(self, key_id: str) -> dict[str, str]:
        """The Authorization header of a key made by `key`."""
        return {"Authorization": f"Bearer {self.secrets[key_id]}"}

    def jobs(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Job)) or 0)

    def finish(self, job_id: str) -> None:
        with self.sessions() as session:
            values = {"status": JobStatus.SUCCEEDED.value, "finished_at": utcnow()}
            session.execute(update(Job).where(Job.id == job_id).values(**values))
            session.commit()


@pytest.fixture
def limited(tmp_path: Path, database_url: str, redis_server: str) -> Iterator[LimitedApp]:
    migrate(database_url)
    # A Redis database of this module's own, emptied: the queue and the counters start at 0.
    redis_url = redis_server.rsplit("/", 1)[0] + "/7"
    Redis.from_url(redis_url).flushdb()
    running = LimitedApp(tmp_path, database_url, redis_url)
    yield running
    running.engine.dispose()


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.content_type == PROBLEM
    body: dict[str, Any] = response.json
    assert body["code"] == code
    return body


def _retry_after(response: Any, most: int) -> int:
    seconds = int(response.headers["Retry-After"])
    assert 1 <= seconds <= most
    return seconds


def test_past_the_limit_a_caller_gets_429_with_retry_after_and_ratelimit_headers(
    limited: LimitedApp,
) -> None:
    client = limited.app(RATE_LIMIT_PER_MINUTE="3").test_client()
    remaining = []
    for _ in range(3):
        answer = client.get("/v1/jobs")
        assert answer.status_code == 200
        assert answer.headers["RateLimit-Limit"] == "3"
        assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 60
        remaining.append(answer.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    refused = client.get("/v1/jobs/0123456789abcdef0123456789abcdef")
    body = _problem(refused, 429, "rate_limited")
    assert "3 requests per minute" in body["detail"]
    seconds = _retry_after(refused, 60)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= seconds - 1

    # The probes and the document are never limited, and carry no rate limit headers.
    for path, status in (("/healthz", 200), ("/openapi.json", 200)):
        answer = client.get(path)
        assert answer.status_code == status
        assert "RateLimit-Limit" not in answer.headers
    assert client.get("/readyz").status_code != 429

    # Another address has a count of its own.
    other = client.get("/v1/jobs", environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert other.status_code == 200 and other.headers["RateLimit-Remaining"] == "2"


def test_an_openai_route_over_the_limit_answers_openai_s_rate_limit_error(
    limited: LimitedApp,
) -> None:
    client = limited.app(RATE_LIMIT_PER_MINUTE="1").test_client()
    assert client.get("/v1/models").status_code == 200
    refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429
    assert refused.content_type == "application/json"
    error = refused.json["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert error["param"] is None and "1 requests per minute" in error["message"]
    _retry_after(refused, 60)
    assert limited.jobs() == 0


def test_a_key_s_own_requests_per_minute_override_the_setting(limited: LimitedApp) -> None:
    app = limited.app(RATE_LIMIT_PER_MINUTE="4")
    slow, plain, unlimited = (
        limited.key(requests_per_minute=2),
        limited.key(),
        limited.key(requests_per_minute=0),
    )
    client = app.test_client()
    as_slow = limited.auth(slow)
    assert [client.get("/v1/jobs", headers=as_slow).status_code for _ in range(2)] == [200, 200]
    _problem(client.get("/v1/jobs", headers=as_slow), 429, "rate_limited")

    # The same address with another key: that key's own count, at the setting's limit.
    answer = client.get("/v1/jobs", headers=limited.auth(plain))
    assert answer.status_code == 200 and answer.headers["RateLimit-Limit"] == "4"
    # 0 on a key: not limited at all.
    for _ in range(6):
        answer = client.get("/v1/jobs", headers=limited.auth(unlimited))
        assert answer.status_code == 200 and "RateLimit-Limit" not in answer.headers


def test_with_redis_down_the_limits_are_counted_in_memory_not_turned_into_500s(
    limited: LimitedApp,
) -> None:
    settings_env = {"RATE_LIMIT_PER_MINUTE": "2"}
    limited.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = limited.app(**settings_env).test_client()
    assert [client.get("/v1/jobs").status_code for _ in range(2)] == [200, 200]
    _problem(client.get("/v1/jobs"), 429, "rate_limited")
    # A submit still gets the answer it got before: the broker is unreachable.
    _problem(
        client.post("/v1/jobs", json={"text": "hi"}, environ_base={"REMOTE_ADDR": "127.0.0.3"}),
        503,
        "broker_unavailable",
    )


def test_past_its_unfinished_jobs_a_caller_gets_429_until_one_finishes(limited: LimitedApp) -> None:
    client = limited.app(MAX_UNFINISHED_JOBS="2").test_client()
    first = client.post("/v1/jobs", json={"text": "one"}).json["id"]
    assert client.post("/v1/jobs", json={"text": "two"}).status_code == 202
    refused = client.post("/v1/jobs", json={"text": "three"})
    assert "2 of your jobs" in _problem(refused, 429, "too_many_unfinished_jobs")["detail"]
    _retry_after(refused, 60)
    chat = client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 429 and chat.json["error"]["code"] == "too_many_unfinished_jobs"
    assert chat.json["error"]["type"] == "requests"
    assert limited.jobs() == 2

    # A key counts its own jobs only, up to its own number.
    one_at_a_time = limited.key(max_unfinished_jobs=1)
    as_key = limited.auth(one_at_a_time)
    assert client.post("/v1/jobs", json={"text": "mine"}, headers=as_key).status_code == 202
    _problem(
        client.post("/v1/jobs", json={"text": "again"}, headers=as_key),
        429,
        "too_many_unfinished_jobs",
    )

    limited.finish(first)
    assert client.post("/v1/jobs", json={"text": "three"}).status_code == 202


def test_with_the_queue_full_a_submit_gets_503_and_no_job_is_made(limited: LimitedApp) -> None:
    # No worker consumes: every job stays in the queue's list in Redis.
    client = limited.app(MAX_QUEUE_DEPTH="2", MAX_UNFINISHED_JOBS="0").test_client()
    for text in ("one", "two"):
        assert client.post("/v1/jobs", json={"text": text}).status_code == 202
    assert Redis.from_url(limited.redis_url).llen("voicechat") == 2

    refused = client.post("/v1/jobs", json={"text": "three"})
    assert "2 jobs wait" in _problem(refused, 503, "queue_full")["detail"]
    _retry_after(refused, 60)
    speech = client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "alloy"}
    )
    assert speech.status_code == 503
    assert speech.json["error"]["code"] == "queue_full"
    assert speech.json["error"]["type"] == "server_error"
    _retry_after(speech, 60)
    assert limited.jobs() == 2


def _serve(app: Flask) -> Callable[[], None]:
    """Serves `app` on a free port in threads; returns the function that stops it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.config["TEST_URL"] = f"http://127.0.0.1:{server.server_port}"

    def stop() -> None:
        server.shutdown()
        thread.join()

    return stop


def _at_once(app: Flask, callers: int, **kwargs: Any) -> list[requests.Response]:
    """Sends `callers` identical submits to `app`, served in threads, all released at once."""
    stop = _serve(app)
    url = f"{app.config['TEST_URL']}/v1/jobs"
    barrier = threading.Barrier(callers)
    answers: list[requests.Response] = []

    def send() -> None:
        barrier.wait()
        answers.append(requests.post(url, timeout=60, **kwargs))

    try:
        threads = [threading.Thread(target=send) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop()
    assert len(answers) == callers
    return answers


def test_concurrent_submits_of_one_key_cannot_pass_its_quota(limited: LimitedApp) -> None:
    if not limited.database_url.startswith("postgresql"):
        pytest.skip("exact only on PostgreSQL, whose row lock serialises a key's submits")
    key_id = limited.key(max_unfinished_jobs=2)
    answers = _at_once(limited.app(), 8, json={"text": "Me first"}, headers=limited.auth(key_id))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202, 202] + [429] * 6, [answer.text for answer in answers]
    assert limited.jobs() == 2
