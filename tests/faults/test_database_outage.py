"""PostgreSQL going away under a running API: 503 problems, then recovery without a restart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from harness.stack import FAST_ENGINES, Stack
from models.db import make_engine

pytestmark = pytest.mark.e2e

POSTGRES = os.environ.get("TEST_DATABASE_URL", "")
OUTAGE_DB = "voicechat_outage_test"


@pytest.fixture
def outage_database() -> Iterator[tuple[str, object]]:
    if not POSTGRES.startswith("postgresql"):
        pytest.skip("TEST_DATABASE_URL does not name a PostgreSQL server to take down")
    admin = make_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {OUTAGE_DB} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {OUTAGE_DB}"))
    url = make_url(POSTGRES).set(database=OUTAGE_DB).render_as_string(hide_password=False)
    try:
        yield url, admin
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {OUTAGE_DB} ALLOW_CONNECTIONS true"))
            connection.execute(text(f"DROP DATABASE IF EXISTS {OUTAGE_DB} WITH (FORCE)"))
        admin.dispose()


def _take_down(admin: object, allow: bool) -> None:
    with admin.connect() as connection:  # type: ignore[attr-defined]
        connection.execute(
            text(f"ALTER DATABASE {OUTAGE_DB} ALLOW_CONNECTIONS {str(allow).lower()}")
        )
        if not allow:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{OUTAGE_DB}' AND pid <> pg_backend_pid()"
                )
            )


def test_database_down_gives_503_then_recovers(
    tmp_path: Path, outage_database: tuple[str, object]
) -> None:
    url, admin = outage_database
    stack = Stack(tmp_path, **{**FAST_ENGINES, "DATABASE_URL": url})
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker()
        assert stack.wait(stack.submit(json={"text": "before"}))["status"] == "succeeded"

        _take_down(admin, allow=False)
        for method, path, body in (
            ("post", "/v1/jobs", {"text": "during"}),
            ("get", "/v1/jobs", None),
        ):
            response = stack.http.request(method, stack.url + path, json=body, timeout=30)
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.json()["code"] == "database_unavailable"
        assert stack.status_of("/readyz") == 503
        assert stack.status_of("/healthz") == 200

        _take_down(admin, allow=True)
        job = stack.wait(stack.submit(json={"text": "after"}), timeout=120)
        assert (job["status"], job["result"]["text"]) == ("succeeded", "echo: after")
    finally:
        stack.close()
