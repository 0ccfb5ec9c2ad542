"""API keys on the running service: the CLI, 401s, per-key visibility, and the open mode.

The keys are made with the real `flask --app api keys` command, against the database a real
gunicorn and Celery worker (the fast engines) serve from.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from harness.stack import FAST_ENGINES, Stack
from models.db import make_engine, make_session_factory
from models.tables import ApiKey, Job
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def keys_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `flask --app api keys ...` as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def created(env: dict[str, str], name: str, *options: str) -> dict[str, str]:
    """Creates a key with the CLI; returns what it printed, by label."""
    done = keys_command(env, "create", "--name", name, *options)
    assert done.returncode == 0, done.stderr
    printed = dict(line.split(":", 1) for line in done.stdout.splitlines() if ": " in line)
    return {label.strip(): value.strip() for label, value in printed.items()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def keyed_stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    # Starts open: the tests make its keys with the operator's command and watch it turn keyed.
    stack = Stack(tmp_path, open_mode=True, DATABASE_URL=database_url, **FAST_ENGINES)
    try:
        stack.start_redis()
        yield stack
    finally:
        stack.close()


def test_the_cli_shows_a_secret_once_and_stores_only_its_hash(keyed_stack: Stack) -> None:
    alice = created(keyed_stack.env, "alice", "--requests-per-minute", "30")
    assert alice["secret"].startswith("vc_") and len(alice["secret"]) > 40
    assert alice["webhook secret"].startswith("whsec_")

    engine = make_engine(keyed_stack.env["DATABASE_URL"])
    with make_session_factory(engine)() as session:
        row = session.scalars(select(ApiKey)).one()
    engine.dispose()
    assert row.id == alice["id"] and row.requests_per_minute == 30
    assert row.secret_hash == hashlib.sha256(alice["secret"].encode()).hexdigest()
    stored = [str(value) for value in vars(row).values()]
    assert not any(alice["secret"] in value for value in stored)
    assert alice["secret"].startswith(row.prefix)

    listing = keys_command(keyed_stack.env, "list")
    assert listing.returncode == 0, listing.stderr
    assert alice["id"] in listing.stdout and row.prefix in listing.stdout
    assert alice["secret"] not in listing.stdout and "30" in listing.stdout

    assert keys_command(keyed_stack.env, "revoke", alice["id"]).returncode == 0
    assert "\t-\n" not in keys_command(keyed_stack.env, "list").stdout  # revoked has a date
    unknown = keys_command(keyed_stack.env, "revoke", "0" * 32)
    assert unknown.returncode != 0 and "no key" in unknown.stderr


def _get(stack: Stack, path: str, secret: str, **kwargs: Any) -> Any:
    return stack.http.get(stack.url + path, headers=bearer(secret), timeout=30, **kwargs)


def test_keys_are_required_and_each_sees_only_its_own(keyed_stack: Stack) -> None:
    alice = created(keyed_stack.env, "alice")["secret"]
    bob = created(keyed_stack.env, "bob")
    keyed_stack.start_api()
    keyed_stack.start_worker()
    url = keyed_stack.url

    missing = keyed_stack.http.get(f"{url}/v1/jobs", timeout=10)
    assert missing.status_code == 401
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.json()["code"] == "missing_api_key"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = _get(keyed_stack, "/v1/jobs", "vc_not-a-key")
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    openai = keyed_stack.http.get(f"{url}/v1/models", timeout=10)
    assert openai.status_code == 401 and openai.headers["WWW-Authenticate"].startswith("Bearer")
    assert openai.json() == {
        "error": {
            "message": "The API key is unknown or revoked.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    for open_path in ("/healthz", "/readyz", "/openapi.json"):
        assert keyed_stack.status_of(open_path) == 200, open_path
    assert _get(keyed_stack, "/v1/models", alice).status_code == 200

    posted = keyed_stack.http.post(
        f"{url}/v1/jobs",
        json={"text": "Say it aloud.", "reply": "voice"},
        headers=bearer(alice),
        timeout=30,
    )
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]
    conversation = keyed_stack.http.post(f"{url}/v1/conversations", headers=bearer(alice)).json()
    for path in (f"/v1/jobs/{job_id}", f"/v1/conversations/{conversation['id']}"):
        assert _get(keyed_stack, path, alice).status_code == 200
    _until_succeeded(keyed_stack, job_id, alice)
    assert _get(keyed_stack, f"/v1/jobs/{job_id}/audio", alice).status_code == 200
    assert _get(keyed_stack, f"/v1/jobs/{job_id}/events", alice).status_code == 200

    # Bob: every one of Alice's rows is as unknown as an id that never existed.
    for path, code in (
        (f"/v1/jobs/{job_id}", "job_not_found"),
        (f"/v1/jobs/{job_id}/audio", "job_not_found"),
        (f"/v1/jobs/{job_id}/events", "job_not_found"),
        (f"/v1/jobs/{job_id}/events?after=99999999999999-0", "job_not_found"),
        (f"/v1/conversations/{conversation['id']}", "conversation_not_found"),
    ):
        refused = _get(keyed_stack, path, bob["secret"])
        assert (refused.status_code, refused.json()["code"]) == (404, code), path
    into_hers = keyed_stack.http.post(
        f"{url}/v1/jobs",
        json={"text": "And mine?", "conversation_id": conversation["id"]},
        headers=bearer(bob["secret"]),
        timeout=30,
    )
    assert into_hers.status_code == 404
    assert into_hers.json()["code"] == "conversation_not_found"
    assert _get(keyed_stack, "/v1/jobs", bob["secret"]).json()["data"] == []
    hers = _get(keyed_stack, "/v1/jobs", alice).json()["data"]
    assert [job["id"] for job in hers] == [job_id]

    # A revoked key is refused on its next request.
    assert keys_command(keyed_stack.env, "revoke", bob["id"]).returncode == 0
    revoked = _get(keyed_stack, "/v1/jobs", bob["secret"])
    assert revoked.status_code == 401 and revoked.json()["code"] == "invalid_api_key"
    assert _get(keyed_stack, "/v1/jobs", alice).status_code == 200
    assert bob["secret"] not in (keyed_stack.data_dir / "api.log").read_text()


def _until_succeeded(stack: Stack, job_id: str, secret: str) -> None:
    stack.http.headers.update(bearer(secret))
    try:
        assert stack.wait(job_id)["status"] == "succeeded"
    finally:
        del stack.http.headers["Authorization"]


def test_with_no_key_the_service_runs_open_on_loopback(
    open_client_with: Callable[..., Any],
) -> None:
    open_client = open_client_with()
    assert open_client.post("/v1/jobs", json={"text": "hello"}).status_code == 202
    # OpenAI's SDKs always send a key: in open mode it is ignored.
    with_dummy = open_client.post("/v1/jobs", json={"text": "hi"}, headers=bearer("sk-anything"))
    assert with_dummy.status_code == 202
    listed = open_client.get("/v1/jobs").json["data"]
    assert {job["id"] for job in listed} == {with_dummy.json["id"], listed[-1]["id"]}
    sessions = open_client.application.extensions["voicechat.sessions"]
    with sessions() as session:
        assert {job.api_key_id for job in session.scalars(select(Job))} == {None}
    # Open is for this machine only: a forwarded or remote request needs a key.
    proxied = open_client.get("/v1/jobs", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 401 and proxied.json["code"] == "missing_api_key"
    remote = open_client.get("/v1/jobs", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 401
