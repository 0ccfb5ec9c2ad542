"""The bound on held requests, on real processes: past MAX_HELD_REQUESTS, prompt honest answers."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError

from api import create_app, warm_up
from api.held_requests import HeldRequests
from harness.stack import Stack, add_key, api_only
from scripts.launch import migrate
from tests.conftest import make_settings

PLACES = 2


def test_places_are_taken_at_once_or_not_at_all_and_released_once() -> None:
    bound = HeldRequests(2)
    first, second = bound.try_take(), bound.try_take()
    assert first is not None and second is not None
    assert bound.try_take() is None
    first.release()
    first.release()  # a stream's close and its generator both release: counted once
    with bound.try_take() or pytest.fail("a place was free"):
        assert bound.try_take() is None  # one place was free, not two
    assert bound.try_take() is not None  # given back on leaving the block
    assert bound.try_take() is None


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One API process with two places and no worker: every job stays queued, so a follower
    # that gets in is held until it leaves.
    with api_only(
        tmp_path_factory.mktemp("held"),
        API_WORKERS="1",
        API_THREADS="4",
        MAX_HELD_REQUESTS=str(PLACES),
        MAX_WAIT_SECONDS="3600",
    ) as stack:
        yield stack


def _follow(
    stack: Stack, job_id: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Opens an event stream on a raw socket; returns it with the status, headers and the
    first bytes of the body (kept open: the follower stays)."""
    client = socket.create_connection(("127.0.0.1", stack.api_port), timeout=timeout)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    client.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    )
    reader = client.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.readline() + reader.readline() if status == 200 else b""
    return client, status, headers, body


@pytest.mark.e2e
def test_past_the_bound_followers_are_refused_and_waits_declined(full_stack: Stack) -> None:
    job_id = full_stack.submit(json={"text": "Who follows this?"})
    held = [_follow(full_stack, job_id, full_stack.auth) for _ in range(PLACES)]
    assert [status for _, status, _, _ in held] == [200] * PLACES
    assert all(b"retry: 2000" in body for _, _, _, body in held)

    client, status, headers, _ = _follow(full_stack, job_id, full_stack.auth)
    client.close()
    assert status == 503
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"].isdigit()
    problem = full_stack.http.get(f"{full_stack.url}/v1/jobs/{job_id}/events", timeout=30)
    assert problem.status_code == 503 and problem.json()["code"] == "server_busy"

    # Short requests are served beside the held ones: they have threads of their own.
    assert full_stack.http.get(f"{full_stack.url}/healthz", timeout=30).status_code == 200
    assert full_stack.job(job_id)["status"] == "queued"

    # A wait of an hour is declined: the usual 202 comes back, without Preference-Applied.
    declined = full_stack.http.post(
        f"{full_stack.url}/v1/jobs",
        json={"text": "Wait for me?"},
        headers={"Prefer": "wait=3600"},
        timeout=60,
    )
    assert declined.status_code == 202, declined.text
    assert "Preference-Applied" not in declined.headers
    assert declined.json()["status"] == "queued"

    # The OpenAI routes answer in their own shape, before any job is made.
    jobs_before = _job_count(full_stack)
    chat = full_stack.http.post(
        f"{full_stack.url}/v1/chat/completions",
        json={"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "server_busy"
    assert chat.json()["error"]["type"] == "server_error"
    assert chat.headers["Retry-After"].isdigit()
    assert _job_count(full_stack) == jobs_before

    # A follower that leaves frees its place (noticed at its stream's next quiet beat).
    for gone, *_ in held:
        gone.close()
    _until_streaming(full_stack, job_id)


def _job_count(stack: Stack) -> int:
    return len(stack.http.get(f"{stack.url}/v1/jobs?limit=100", timeout=30).json()["data"])


def _until_streaming(stack: Stack, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/events", stream=True, timeout=30)
        status = response.status_code
        response.close()
        if status == 200:
            return
        assert status == 503
        time.sleep(1)
    pytest.fail("the places of followers that left were never freed")


def test_every_held_request_can_have_its_own_event_log_connection(tmp_path: Path) -> None:
    # redis-py's pool stops at 100 connections by default: past it, a follower would poll.
    app = create_app({"settings": make_settings(tmp_path, MAX_HELD_REQUESTS="500")})
    pool = app.extensions["voicechat.events"].redis.connection_pool
    assert pool.max_connections > 500


def test_the_held_requests_connections_are_open_before_the_first_follower(
    tmp_path: Path, redis_server: str
) -> None:
    settings = make_settings(tmp_path, MAX_HELD_REQUESTS="30", REDIS_URL=redis_server)
    app = create_app({"settings": settings})
    redis = Redis.from_url(redis_server)
    # By id: the shared Redis's other clients (earlier tests') may come and go meanwhile.
    before = {client["id"] for client in redis.client_list()}
    warm_up(app)  # as gunicorn's post_worker_init runs it
    assert len({client["id"] for client in redis.client_list()} - before) >= 30


def test_connections_opened_before_redis_refused_more_stay_in_the_pool(
    tmp_path: Path, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, MAX_HELD_REQUESTS="30", REDIS_URL=redis_server)
    app = create_app({"settings": settings})
    pool = app.extensions["voicechat.events"].redis.connection_pool
    opened: list[object] = []
    get_connection = pool.get_connection

    def refused_at_the_fifth() -> object:
        if len(opened) == 4:
            raise ConnectionError("max number of clients reached")
        opened.append(get_connection())
        return opened[-1]

    monkeypatch.setattr(pool, "get_connection", refused_at_the_fifth)
    warm_up(app)  # logs a warning, and raises nothing
    monkeypatch.undo()
    redis = Redis.from_url(redis_server)
    before = len(redis.client_list())
    taken = [pool.get_connection() for _ in range(4)]  # the four it opened, none new
    assert len(redis.client_list()) == before
    for connection in taken:
        pool.release(connection)


def test_followers_start_in_turn_and_wait_only_so_long(
    tmp_path: Path, database_url: str, redis_server: str
) -> None:
    # Keyed: the turn is taken before the key lookup, and given back however the request ends.
    migrate(database_url)
    secret = add_key(database_url).secret
    settings = make_settings(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=redis_server,
        FOLLOWER_TURNS="1",
        FOLLOWER_TURN_SECONDS="0.2",
    )
    app = create_app({"settings": settings})
    client, auth = app.test_client(), {"Authorization": f"Bearer {secret}"}
    job_id = client.post("/v1/jobs", json={"text": "Who follows?"}, headers=auth).json["id"]
    turns = app.extensions["voicechat.follower_turns"]

    assert turns.acquire(blocking=False)  # another follower is starting
    started = time.monotonic()
    refused = client.get(f"/v1/jobs/{job_id}/events", headers=auth)
    assert refused.status_code == 503 and refused.json["code"] == "server_busy"
    assert refused.headers["Retry-After"] == "1"
    assert 0.2 <= time.monotonic() - started < 5
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200  # not a stream
    turns.release()

    for headers in ({}, auth):  # refused by the key check, then a stream that starts
        response = client.get(f"/v1/jobs/{job_id}/events", headers=headers, buffered=False)
        assert response.status_code == (401 if not headers else 200)
        # Given back once set up: the stream goes on in no turn.
        assert turns.acquire(blocking=False)
        turns.release()
        response.close()


@pytest.mark.e2e
def test_held_requests_keep_no_database_connection(tmp_path: Path, database_url: str) -> None:
    # Keyed, on the default settings (the pool's 5 and 10 more, 500 places): each follower's key
    # lookup, its job's row and its stream's reads use short sessions of their own. A stream
    # that kept the connection its key lookup checked out left none for the 16th request. The
    # wait for a turn to start is lifted (a short wait is tested above): 300 client threads on
    # this machine slow the starts, and here any refusal must be a place's or a connection's.
    followers = 300
    stack = Stack(tmp_path, API_WORKERS="1", DATABASE_URL=database_url, FOLLOWER_TURN_SECONDS="30")
    try:
        stack.start_redis()
        stack.start_api()
        job_id = stack.submit(json={"text": "Who follows this?"})
        with ThreadPoolExecutor(max_workers=followers) as pool:
            held = list(
                pool.map(lambda _: _follow(stack, job_id, stack.auth, timeout=30), range(followers))
            )
        statuses = Counter(status for _, status, _, _ in held)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 250, statuses  # 500 places: only a stray refusal is fair
        assert all("retry-after" in headers for _, status, headers, _ in held if status == 503)
        # Beside them, a read and a wait answer at once.
        answer = stack.http.get(f"{stack.url}/v1/jobs/{job_id}", timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "queued"
        waited = stack.http.post(
            f"{stack.url}/v1/jobs", json={"text": "And me?"}, headers={"Prefer": "wait=1"}
        )
        assert waited.status_code == 202 and waited.json()["status"] == "queued"
        for client, _, _, _ in held:
            client.close()
    finally:
        stack.close()
