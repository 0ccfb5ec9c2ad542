"""Job events over Server-Sent Events and `Prefer: wait`, on the real service."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Service

pytestmark = pytest.mark.e2e


def _read_events(
    service: Service, path: str, headers: dict[str, str] | None = None, timeout: float = 240
) -> list[dict[str, Any]]:
    """Reads an event stream over a raw HTTP connection until the `done` event."""
    sent = {"Authorization": str(service.http.headers["Authorization"]), **(headers or {})}
    return list(iter_events(service.url, path, sent, timeout))


def iter_events(
    base_url: str, path: str, headers: dict[str, str] | None = None, timeout: float = 240
) -> Iterator[dict[str, Any]]:
    """Yields the events of a stream over a raw HTTP connection as they come, until `done`."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    try:
        while True:
            line = response.fp.readline().decode()
            assert line, f"the stream ended before its done event: {events}"
            line = line.rstrip("\n")
            if not line:
                if "event" in current:
                    events.append(current)
                    yield current
                    if current["event"] == "done":
                        return
                current = {}
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    finally:
        connection.close()


def _wait_for_status(service: Service, job_id: str, status: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.http.get(f"{service.url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never became {status}")


def test_a_subscriber_joining_mid_job_gets_everything_and_the_end(
    service: Service, long_speech: bytes
) -> None:
    job = service.submit(
        data=long_speech, headers={"Content-Type": "audio/wav"}, params={"reply": "voice"}
    )
    _wait_for_status(service, job["id"], "running")  # transcribing a minute takes seconds
    events = _read_events(service, job["events_url"])
    kinds = [event["event"] for event in events]
    assert kinds[0] == "status" and events[0]["data"]["status"] == "running"
    stages = [e["data"]["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["transcribing", "generating", "synthesizing"]
    assert (
        "capital" in next(e for e in events if e["event"] == "transcript")["data"]["text"].lower()
    )
    deltas = [e["data"]["text"] for e in events if e["event"] == "delta"]
    assert len(deltas) > 1
    assert kinds.index("transcript") < kinds.index("delta") < kinds.index("audio") < len(kinds) - 1
    final = events[-1]["data"]
    assert final["id"] == job["id"] and final["status"] == "succeeded"
    assert "".join(deltas).strip().startswith(final["result"]["text"][:20])
    # Resuming after a seen event replays only what came after it.
    seen = events[2]["id"]
    rest = _read_events(service, job["events_url"], headers={"Last-Event-ID": seen})
    assert [e.get("id") for e in rest[:-1]] == [e["id"] for e in events[3:-1]]
    assert rest[-1]["event"] == "done"


def test_events_of_a_finished_job_end_at_once(service: Service) -> None:
    job = service.wait(service.submit(json={"text": "Say hi.", "max_tokens": 5})["id"])
    started = time.monotonic()
    events = _read_events(service, f"/v1/jobs/{job['id']}/events", timeout=30)
    assert events[-1]["data"]["status"] == "succeeded"
    assert time.monotonic() - started < 5


def test_events_of_an_unknown_job_are_404(service: Service) -> None:
    response = service.http.get(f"{service.url}/v1/jobs/{'0' * 32}/events", timeout=10)
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_prefer_wait_answers_with_the_finished_job(service: Service) -> None:
    response = service.http.post(
        f"{service.url}/v1/jobs",
        json={"text": "Say hello.", "max_tokens": 10},
        headers={"Prefer": "wait=60"},
        timeout=90,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=60"
    assert response.json()["status"] == "succeeded" and response.json()["result"]["text"]


def test_prefer_wait_gives_up_with_a_202(service: Service, long_speech: bytes) -> None:
    started = time.monotonic()
    response = service.http.post(
        f"{service.url}/v1/jobs",
        data=long_speech,
        headers={"Content-Type": "audio/wav", "Prefer": "wait=1"},
        timeout=30,
    )
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    assert time.monotonic() - started < 10
    assert service.wait(response.json()["id"])["status"] == "succeeded"


def test_prefer_wait_must_be_a_number(service: Service) -> None:
    response = service.http.post(
        f"{service.url}/v1/jobs", json={"text": "hi"}, headers={"Prefer": "wait=soon"}, timeout=10
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_header"


def test_a_prompt_too_long_for_the_window_is_422_when_waited_for(service: Service) -> None:
    prompt = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3900))
    response = service.http.post(
        f"{service.url}/v1/jobs",
        json={"text": prompt, "max_tokens": 10},
        headers={"Prefer": "wait=60"},
        timeout=90,
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "context_length_exceeded"
