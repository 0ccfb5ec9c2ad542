"""Job webhooks: refused at submit, delivered signed by the real maintenance worker, retried.

The API tier runs the app in-process on a real Redis and database. The delivery tier starts the
API, the job worker (fast engines: these tests are about the plumbing) and the maintenance worker
as processes (`harness.stack.Stack`), and receives on a local HTTP server on 127.0.0.1, which only
WEBHOOK_ALLOWED_NETWORKS lets through. Signatures are verified with the `standardwebhooks`
package, as a receiver would.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from alembic import command
from alembic.config import Config
from flask.testing import FlaskClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from api import create_app
from harness.stack import FAST_ENGINES, Stack
from models.api_keys import create_key, revoke_key
from models.db import make_engine
from models.errors import WebhookTargetNotAllowed
from models.queue import JobQueue
from models.settings import Settings
from models.tables import Job, JobStatus, WebhookDelivery, utcnow
from models.webhooks import allowed_address, check_url, resolve_target
from scripts.launch import migrate
from tests.conftest import ROOT, empty_database, make_settings, tone, wav_bytes

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
KEY_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request; each path answers its scripted
    statuses in turn, then 204."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.scripts: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    receiver.received.append((self.path, headers, body))
                    script = receiver.scripts.get(self.path, [])
                    status = script.pop(0) if script else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_port}{path}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for p, headers, body in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _database_env() -> dict[str, str]:
    """The PostgreSQL under test when there is one (the stack's SQLite otherwise)."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        return {}
    empty_database(url)  # no API key left by another test: the stack runs open
    return {"DATABASE_URL": url}


# The API tier -------------------------------------------------------------------------------


def _client(tmp_path: Path, redis_server: str, **env: str) -> FlaskClient:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=url, configure_logger=False)
    command.upgrade(config, "head")
    settings = make_settings(tmp_path, DATABASE_URL=url, REDIS_URL=redis_server, **env)
    return create_app({"settings": settings}).test_client()


@pytest.fixture
def client(tmp_path: Path, redis_server: str) -> FlaskClient:
    return _client(tmp_path, redis_server, WEBHOOK_SECRET=SECRET)


def _refusal(response: Any, code: str) -> dict[str, Any]:
    assert response.status_code == 422, response.get_data(as_text=True)
    problem: dict[str, Any] = response.json
    assert problem["code"] == code, problem
    return problem


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "example.com/hook",
        "http://",
        "https://user:secret@example.com/hook",
        "https://token@example.com/hook",
        "https://example.com:99999/hook",
        "https://exa mple.com/hook",
        "https://example.com/" + "a" * 2040,
    ],
)
def test_an_invalid_webhook_url_is_refused(client: FlaskClient, url: str) -> None:
    problem = _refusal(
        client.post("/v1/jobs", json={"text": "hi", "webhook": url}), "invalid_webhook_url"
    )
    assert problem["field"] == "webhook"
    assert "secret" not in problem["detail"]  # the URL's credentials are not repeated back


def test_every_body_form_takes_the_webhook_fields(client: FlaskClient) -> None:
    bad = "ftp://example.com/hook"
    form = {"text": "hi", "webhook": bad}
    _refusal(client.post("/v1/jobs", data=form), "invalid_webhook_url")
    multipart = {**form, "webhook_events": "started,completed"}
    _refusal(
        client.post("/v1/jobs", data=multipart, content_type="multipart/form-data"),
        "invalid_webhook_url",
    )
    wav = wav_bytes(tone(0.2), 16_000)
    raw = client.post(
        "/v1/jobs?webhook=ftp://example.com/hook&webhook_events=completed",
        data=wav,
        content_type="audio/wav",
    )
    _refusal(raw, "invalid_webhook_url")
    typo = {"text": "hi", "webhook": "http://127.0.0.1/hook", "webhook_events": "started,ended"}
    assert (
        _refusal(client.post("/v1/jobs", data=typo), "invalid_option")["field"]
        == "webhook_events[1]"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"webhook_events": ["completed"]}, None),  # events without a webhook
        ({"webhook": "https://example.com/h", "webhook_events": "completed"}, "webhook_events"),
        ({"webhook": "https://example.com/h", "webhook_events": []}, "webhook_events"),
        ({"webhook": "https://example.com/h", "webhook_events": ["done"]}, "webhook_events[0]"),
        ({"webhook": "https://example.com/h", "webhook_events": ["started"] * 2}, "webhook_events"),
        ({"webhook": 5}, "webhook"),
    ],
)  # fmt: skip
def test_webhook_events_are_checked(client: FlaskClient, body: dict[str, Any], field: Any) -> None:
    problem = _refusal(client.post("/v1/jobs", json={"text": "hi", **body}), "invalid_option")
    assert problem.get("field") == field


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "10.1.2.3", "169.254.169.254", "0.0.0.0"]
)
def test_a_private_target_is_refused_at_submit(client: FlaskClient, host: str) -> None:
    body = {"text": "hi", "webhook": f"http://{host}:8080/hook"}
    problem = _refusal(client.post("/v1/jobs", json=body), "webhook_target_not_allowed")
    assert problem["field"] == "webhook"


# (WEBHOOK_ALLOWED_NETWORKS, target host, allowed): a listed network opens private and loopback
# targets only; link-local and the like stay refused even when listed (issue 20).
NETWORK_CASES = [
    ("169.254.0.0/16", "169.254.169.254", False),
    ("0.0.0.0/0", "169.254.169.254", False),
    ("0.0.0.0/0,::/0", "[::ffff:169.254.169.254]", False),
    ("0.0.0.0/0,::/0", "[fe80::1]", False),
    ("0.0.0.0/0", "0.0.0.0", False),
    ("0.0.0.0/0", "0.0.0.1", False),
    ("0.0.0.0/0", "224.0.0.1", False),
    ("127.0.0.0/8", "127.0.0.1", True),
    ("127.0.0.0/8", "[::ffff:127.0.0.1]", True),
    ("::1/128", "[::1]", True),
    ("127.0.0.0/8", "10.1.2.3", False),
    ("10.0.0.0/16", "10.1.2.3", False),
    ("10.0.0.0/8", "10.1.2.3", True),
]


@pytest.mark.parametrize(("networks", "host", "allowed"), NETWORK_CASES)
def test_allowed_networks_open_private_targets_at_submit(
    tmp_path: Path, redis_server: str, networks: str, host: str, allowed: bool
) -> None:
    client = _client(
        tmp_path, redis_server, WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOWED_NETWORKS=networks
    )
    response = client.post("/v1/jobs", json={"text": "hi", "webhook": f"http://{host}:8080/hook"})
    if allowed:
        assert response.status_code == 202, response.get_data(as_text=True)
    else:
        _refusal(response, "webhook_target_not_allowed")


@pytest.mark.parametrize(("networks", "host", "allowed"), NETWORK_CASES)
def test_allowed_networks_open_private_targets_at_delivery(
    networks: str, host: str, allowed: bool
) -> None:
    # The check each delivery attempt makes (worker/webhooks.py's `post`), before connecting.
    listed = Settings.from_env({"WEBHOOK_ALLOWED_NETWORKS": networks}).webhook_allowed_networks
    parts = check_url(f"http://{host}:8080/hook")
    if allowed:
        assert resolve_target(parts, networks=listed)
    else:
        with pytest.raises(WebhookTargetNotAllowed):
            resolve_target(parts, networks=listed)


def test_an_open_service_without_a_secret_refuses_webhooks(
    tmp_path: Path, redis_server: str
) -> None:
    client = _client(tmp_path, redis_server)
    body = {"text": "hi", "webhook": "https://example.com/hook"}
    _refusal(client.post("/v1/jobs", json=body), "webhook_secret_missing")


def test_public_addresses_only_are_allowed() -> None:
    allowed = {"8.8.8.8", "2606:4700::1111"}
    for text in [*allowed, "127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "fc00::1",
                 "169.254.169.254", "fe80::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::",
                 "240.0.0.1", "100.64.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]:  # fmt: skip
        assert allowed_address(ipaddress.ip_address(text)) is (text in allowed), text


def test_a_delivery_connects_to_the_checked_address_not_the_name(receiver: Receiver) -> None:
    # The pin against DNS rebinding is http.client's `_create_connection` hook: were it ever
    # unused, the name would be resolved again (and `.invalid` never resolves).
    from worker.webhooks import _connection

    port = receiver.server.server_port
    connection = _connection(urlsplit(f"http://pinned.invalid:{port}/pinned"), "127.0.0.1")
    try:
        connection.request("POST", "/pinned", body=b"{}")
        assert connection.getresponse().status == 204
    finally:
        connection.close()
    [(headers, body)] = receiver.at("/pinned")
    assert headers["host"] == f"pinned.invalid:{port}" and body == b"{}"


# The delivery tier --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("webhooks"),
        **FAST_ENGINES,
        **_database_env(),
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_BACKOFF_SECONDS="1",
        WEBHOOK_MAX_ATTEMPTS="3",
    )
    with running.serving(maintenance=True):
        yield running


def _deliveries(
    stack: Stack, job_id: str, count: int, key: str | None = None
) -> list[dict[str, Any]]:
    """The job's delivery attempts, once `count` of them are recorded (read with `key`, the
    secret of the API key that owns the job, if one does)."""
    found: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def recorded() -> bool:
        answer = stack.http.get(f"{stack.url}/v1/jobs/{job_id}", headers=headers, timeout=10)
        found[:] = answer.json()["webhook"]["deliveries"]
        return len(found) >= count

    stack._until(recorded, f"{count} webhook attempts of job {job_id}", timeout=120)
    return found


def _signing(stack: Stack) -> str:
    """The secret the stack's jobs are signed with: its API key's webhook secret."""
    assert stack.key is not None
    return stack.key.webhook_secret


def _verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(body, headers)
    return payload


def _without_stamp(delivery: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in delivery.items() if k != "at"}


def test_a_completed_job_is_delivered_signed(stack: Stack, receiver: Receiver) -> None:
    job_id = stack.submit(json={"text": "hello there", "webhook": receiver.url("/done")})
    assert stack.job(job_id)["webhook"]["events"] == ["completed"]
    job = stack.wait(job_id)
    [delivery] = _deliveries(stack, job_id, 1)
    assert _without_stamp(delivery) == {
        "event": "completed", "attempt": 1, "status_code": 204, "error": None, "delivered": True,
    }  # fmt: skip
    [(headers, body)] = receiver.at("/done")
    payload = _verified(_signing(stack), headers, body)
    assert headers["webhook-id"] == f"msg_{job_id}_completed"
    assert payload["type"] == "job.completed" and payload["timestamp"] == job["finished_at"]
    assert payload["data"]["id"] == job_id and payload["data"]["status"] == "succeeded"
    assert payload["data"]["result"]["text"] == job["result"]["text"]
    with pytest.raises(Exception, match="signature"):
        Webhook(KEY_SECRET).verify(body, headers)  # another secret does not verify it


def test_a_wait_answers_a_job_with_a_webhook(stack: Stack, receiver: Receiver) -> None:
    """`Prefer: wait` answers a finished job that has a webhook with its view, not a 500 (the
    row was read detached once, and its deliveries, in another table, failed to load)."""
    hook = receiver.url("/waited")
    answer = stack.http.post(
        f"{stack.url}/v1/jobs",
        json={"text": "hi", "webhook": hook},
        headers={"Prefer": "wait=60"},
        timeout=90,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded" and answer.json()["webhook"]["url"] == hook


def test_started_and_completed_from_a_form(stack: Stack, receiver: Receiver) -> None:
    form = {"text": "hi", "webhook": receiver.url("/both"), "webhook_events": "started,completed"}
    job_id = stack.submit(data=form)
    stack.wait(job_id)
    deliveries = _deliveries(stack, job_id, 2)
    assert sorted(d["event"] for d in deliveries) == ["completed", "started"]
    assert all(d["delivered"] for d in deliveries)
    signing = _signing(stack)
    payloads = [_verified(signing, headers, body) for headers, body in receiver.at("/both")]
    assert sorted(p["type"] for p in payloads) == ["job.completed", "job.started"]
    assert {p["data"]["id"] for p in payloads} == {job_id}


def test_a_failed_delivery_is_retried_with_the_same_id(stack: Stack, receiver: Receiver) -> None:
    receiver.scripts["/flaky"] = [500, 302]  # a redirect is not followed: a failed attempt
    job_id = stack.submit(json={"text": "hi", "webhook": receiver.url("/flaky")})
    stack.wait(job_id)
    deliveries = _deliveries(stack, job_id, 3)
    failed = {"event": "completed", "error": "http_status", "delivered": False}
    assert [_without_stamp(d) for d in deliveries] == [
        {**failed, "attempt": 1, "status_code": 500},
        {**failed, "attempt": 2, "status_code": 302},
        {"event": "completed", "attempt": 3, "status_code": 204, "error": None, "delivered": True},
    ]
    received = receiver.at("/flaky")
    assert len(received) == 3
    assert {headers["webhook-id"] for headers, _ in received} == {f"msg_{job_id}_completed"}
    for headers, body in received:
        assert _verified(_signing(stack), headers, body)["data"]["id"] == job_id


def _finished_job(stack: Stack, url: str, **columns: Any) -> str:
    """A succeeded job of the stack's key, written straight to the database, as if it had run
    and been announced."""
    columns.setdefault("done_announced", True)
    columns.setdefault("api_key_id", stack.key.row.id if stack.key else None)
    engine = make_engine(stack.env["DATABASE_URL"])
    now = utcnow()
    try:
        with Session(engine) as session:
            job = Job(
                reply_format="text", input_kind="text", input_text="hi", options={},
                status=JobStatus.SUCCEEDED.value, reply_text="hello", created_at=now,
                finished_at=now, webhook_url=url, webhook_events=["completed"], **columns,
            )  # fmt: skip
            session.add(job)
            session.commit()
            return job.id
    finally:
        engine.dispose()


def test_a_keys_job_is_signed_with_its_keys_secret(stack: Stack, receiver: Receiver) -> None:
    engine = make_engine(stack.env["DATABASE_URL"])
    with Session(engine) as session:
        made = create_key(session, "webhooks test")
        key_id = made.row.id
    try:
        job_id = _finished_job(stack, receiver.url("/keyed"), api_key_id=key_id)
        JobQueue(stack.env["REDIS_URL"]).send_webhook(job_id, "completed")
        assert _deliveries(stack, job_id, 1, made.secret)[0]["delivered"] is True
    finally:
        with Session(engine) as session:
            revoke_key(session, key_id)
        engine.dispose()
    [(headers, body)] = receiver.at("/keyed")
    assert _verified(made.webhook_secret, headers, body)["data"]["id"] == job_id
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body, headers)


def test_an_end_the_reconciler_announces_gets_its_webhook(stack: Stack, receiver: Receiver) -> None:
    # Its announcer died between the terminal commit and the announcement: the reconciler (in
    # the job worker's parent) announces the end, and queues the webhook with it.
    job_id = _finished_job(stack, receiver.url("/reconciled"), done_announced=False)
    assert _deliveries(stack, job_id, 1)[0]["delivered"] is True
    [(headers, body)] = receiver.at("/reconciled")
    assert _verified(_signing(stack), headers, body)["data"]["id"] == job_id


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    # The job was accepted (its name resolved elsewhere, or the DNS answer changed since): the
    # maintenance worker, with private targets not allowed, resolves `localhost` itself.
    stack = Stack(tmp_path, **_database_env(), WEBHOOK_SECRET=SECRET)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_maintenance_worker()
        job_id = _finished_job(stack, receiver.url("/rebound", host="localhost"))
        JobQueue(stack.env["REDIS_URL"]).send_webhook(job_id, "completed")
        [delivery] = _deliveries(stack, job_id, 1)
    finally:
        stack.close()
    assert _without_stamp(delivery) == {
        "event": "completed", "attempt": 1, "status_code": None, "error": "target_not_allowed",
        "delivered": False,
    }  # fmt: skip
    assert receiver.at("/rebound") == []
    assert json.loads(json.dumps(delivery))  # plain JSON


def test_the_document_declares_the_webhook(client: FlaskClient) -> None:
    document: dict[str, Any] = client.get("/openapi.json").json  # type: ignore[assignment]
    options = document["components"]["schemas"]["TextJobRequest"]["properties"]
    assert {"webhook", "webhook_events"} <= set(options)
    event = document["webhooks"]["jobEvent"]["post"]
    headers = {p["name"] for p in event["parameters"]}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    refusals = document["paths"]["/v1/jobs"]["post"]["responses"]["422"]["description"]
    for code in ("invalid_webhook_url", "webhook_target_not_allowed", "webhook_secret_missing"):
        assert code in refusals


def test_an_attempt_for_a_job_erased_meanwhile_is_dropped_not_raised(tmp_path: Path) -> None:
    # The job's row is read, then erased (DELETE) while the attempt is made: its record cannot
    # be written (the row it belongs to is gone), and nothing is retried.
    from worker.webhooks import attempt_delivery

    url = f"sqlite:///{tmp_path / 'erased.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            job = Job(
                reply_format="text", input_kind="text", input_text="hi", options={},
                status=JobStatus.SUCCEEDED.value, webhook_url="https://example.com/hook",
                webhook_events=["completed"],
            )  # fmt: skip
            session.add(job)
            session.commit()
            with engine.begin() as other:  # the erasure, on another connection
                other.execute(delete(Job).where(Job.id == job.id))
            outcome = attempt_delivery(session, job, "completed", 1)
        assert outcome.retry is False and not outcome.delivered
        with Session(engine) as session:
            assert session.scalars(select(WebhookDelivery)).all() == []
    finally:
        engine.dispose()
