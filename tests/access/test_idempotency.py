"""Idempotency-Key on the app with a real Redis and database: replay, mismatch, in flight, one job
for concurrent retries."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest

from models.tables import IdempotencyRecord, utcnow
from tests.access import test_limits
from tests.access.test_limits import LimitedApp, _at_once, _problem
from tests.conftest import tone, wav_bytes

# The fair-sharing tests' fixture: the app on a fresh database and an emptied Redis database.
limited = test_limits.limited


def _submit(client: Any, key: str, **kwargs: Any) -> Any:
    return client.post("/v1/jobs", headers={"Idempotency-Key": key}, **kwargs)


def test_the_same_request_with_the_same_key_replays_its_job(limited: LimitedApp) -> None:
    client = limited.app().test_client()
    first = _submit(client, "order-1", json={"text": "Hello", "max_tokens": 20})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    job_id = first.json["id"]
    limited.finish(job_id)

    # The same request (key order and a named default do not matter): the same job, as it is now.
    again = _submit(client, "order-1", json={"max_tokens": 20, "text": "Hello", "reply": "text"})
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == job_id and again.json["status"] == "succeeded"
    assert again.headers["Location"] == f"/v1/jobs/{job_id}"
    # The draft's quoted form of the same key.
    quoted = _submit(client, '"order-1"', json={"text": "Hello", "max_tokens": 20})
    assert quoted.json["id"] == job_id

    # Another body under the key: 422; another key: another job.
    changed = _submit(client, "order-1", json={"text": "Hello", "max_tokens": 21})
    _problem(changed, 422, "idempotency_key_reused")
    assert _submit(client, "order-2", json={"text": "Hello"}).json["id"] != job_id
    # Keys are per caller: another API key's "order-1" is its own.
    as_key = {**limited.auth(limited.key()), "Idempotency-Key": "order-1"}
    theirs = client.post("/v1/jobs", json={"text": "Hello", "max_tokens": 20}, headers=as_key)
    assert theirs.status_code == 202 and theirs.json["id"] != job_id
    assert limited.jobs() == 3


def test_a_multipart_retry_is_the_same_request_whatever_its_boundary(limited: LimitedApp) -> None:
    client = limited.app().test_client()
    audio = wav_bytes(tone(0.5), 16_000)

    def upload(data: bytes) -> Any:
        form = {"audio": (io.BytesIO(data), "q.wav", "audio/wav"), "reply": "voice"}
        return _submit(client, "upload", data=form, content_type="multipart/form-data")

    first = upload(audio)
    assert first.status_code == 202
    again = upload(audio)  # the test client draws a new boundary each time
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == first.json["id"]
    _problem(upload(wav_bytes(tone(0.6), 16_000)), 422, "idempotency_key_reused")


def test_a_key_in_flight_is_409_until_it_goes_stale(limited: LimitedApp) -> None:
    client = limited.app().test_client()
    with limited.sessions() as session:
        session.add(IdempotencyRecord(scope="", key="busy", fingerprint="0" * 64))
        session.add(
            IdempotencyRecord(
                scope="",
                key="crashed",
                fingerprint="0" * 64,
                created_at=utcnow() - timedelta(seconds=61),
            )
        )
        session.commit()
    _problem(_submit(client, "busy", json={"text": "Hello"}), 409, "idempotency_key_in_flight")
    # A first request that crashed on the way does not hold its key for ever.
    taken = _submit(client, "crashed", json={"text": "Hello"})
    assert taken.status_code == 202 and "Idempotent-Replayed" not in taken.headers
    assert _submit(client, "crashed", json={"text": "Hello"}).json["id"] == taken.json["id"]


@pytest.mark.parametrize(
    "key",
    ["", " ", "x" * 256, "tab\tin", "caf\u00e9"],
    ids=["empty", "blank", "256", "tab", "latin"],
)
def test_a_malformed_key_is_400(limited: LimitedApp, key: str) -> None:
    client = limited.app().test_client()
    _problem(_submit(client, key, json={"text": "Hello"}), 400, "invalid_idempotency_key")
    assert limited.jobs() == 0


def test_a_refused_submit_gives_its_key_back(limited: LimitedApp) -> None:
    client = limited.app(MAX_UNFINISHED_JOBS="1").test_client()
    blocking = client.post("/v1/jobs", json={"text": "first"}).json["id"]
    refused = _submit(client, "retry-me", json={"text": "second"})
    _problem(refused, 429, "too_many_unfinished_jobs")
    limited.finish(blocking)
    retried = _submit(client, "retry-me", json={"text": "second"})
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def test_concurrent_retries_with_one_key_make_exactly_one_job(limited: LimitedApp) -> None:
    answers = _at_once(
        limited.app(), 8, json={"text": "Once only"}, headers={"Idempotency-Key": "race"}
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {202, 409}, [answer.text for answer in answers]
    made = {answer.json()["id"] for answer in answers if answer.status_code == 202}
    assert len(made) == 1
    assert limited.jobs() == 1
    replays = [a for a in answers if a.headers.get("Idempotent-Replayed") == "true"]
    assert len(replays) == statuses.count(202) - 1
