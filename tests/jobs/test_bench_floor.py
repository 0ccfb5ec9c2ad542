"""The floor app (bench/floor.py) does the work it stands for, or it would flatter the service."""

from __future__ import annotations

import pytest
from redis import Redis
from sqlalchemy import select

from bench import floor
from harness.stack import add_key
from models.db import make_engine
from models.tables import Job
from scripts.launch import migrate


def test_floor_queues_a_keyed_job_and_refuses_a_keyless_one(
    database_url: str, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(database_url)
    key = add_key(database_url, "floor")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_server)
    http = floor.create_app().test_client()
    body = {"text": "What is the capital of France?"}

    assert http.post("/v1/jobs", json=body).status_code == 401
    assert (
        http.post("/v1/jobs", json=body, headers={"Authorization": "Bearer vc_no"}).status_code
        == 401
    )
    answer = http.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key.secret}"})
    bad = http.post(
        "/v1/jobs", json={"text": ""}, headers={"Authorization": f"Bearer {key.secret}"}
    )

    assert answer.status_code == 202
    assert bad.status_code == 422
    job_id = answer.get_json()["id"]
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Job.id, Job.api_key_id, Job.status, Job.input_text)).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [(job_id, key.row.id, "queued", body["text"])]
    assert job_id.encode() in Redis.from_url(redis_server).lrange(floor.QUEUE, 0, -1)
    assert http.get("/healthz").status_code == 200
