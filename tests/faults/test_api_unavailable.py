"""The API with its broker or its database unreachable: 503 problems, and no job left queued."""

from __future__ import annotations

import socket
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from api import create_app
from models.db import make_engine, make_session_factory
from models.tables import Job, new_job_id
from scripts.launch import migrate
from tests.conftest import ROOT, make_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_unreachable_broker_gives_503_and_fails_the_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=url, configure_logger=False)
    command.upgrade(config, "head")
    settings = make_settings(
        tmp_path, DATABASE_URL=url, REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0"
    )
    client = create_app({"settings": settings}).test_client()

    response = client.post("/v1/jobs", json={"text": "hello"})
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.json is not None and response.json["code"] == "broker_unavailable"

    with make_session_factory(make_engine(url))() as session:
        jobs = list(session.scalars(select(Job)))
    assert [(job.status, job.error_code) for job in jobs] == [("failed", "broker_unavailable")]

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json is not None and ready.json["checks"]["broker"]["ok"] is False


def test_unreachable_database_gives_503(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'missing' / 'dir' / 'db.sqlite'}",
        REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0",
    )
    client = create_app({"settings": settings}).test_client()
    for response in (
        client.post("/v1/jobs", json={"text": "hello"}),
        client.get("/v1/jobs/0123456789abcdef0123456789abcdef"),
        client.get("/v1/jobs"),
    ):
        assert response.status_code == 503, response.data
        assert response.json is not None and response.json["code"] == "database_unavailable"
    assert client.get("/healthz").status_code == 200


def test_an_erasure_with_redis_unreachable_gives_503_and_keeps_the_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    settings = make_settings(
        tmp_path, DATABASE_URL=url, REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0"
    )
    client = create_app({"settings": settings}).test_client()
    job = Job(id=new_job_id(), reply_format="text", input_kind="text", input_text="hi", options={})
    with make_session_factory(make_engine(url))() as session:
        session.add(job)
        session.commit()

    response = client.delete(f"/v1/jobs/{job.id}")
    assert response.status_code == 503
    assert response.json is not None and response.json["code"] == "service_unavailable"
    assert client.get(f"/v1/jobs/{job.id}").status_code == 200
