"""The Postman collection (postman/): it covers every route, and newman runs it against the service.

The live run uses the session's service on the real engines (tests/conftest.py `service`) with
an API key made by `flask --app api keys create`, as an operator would; the key is revoked
afterwards, so the service runs open again for the other tests that share it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.openapi import NOT_THE_API
from tests.access.test_api_keys import created, keys_command
from tests.conftest import ROOT, TERMINAL, Service, make_settings

POSTMAN = ROOT / "postman"
COLLECTION = POSTMAN / "voicechat.postman_collection.json"
ENVIRONMENT = POSTMAN / "voicechat.postman_environment.json"
NEWMAN = POSTMAN / "node_modules" / ".bin" / "newman"
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
# Unset for the service (tests/conftest.py `running_service`), and so for its keys command too.
_SERVICE_URLS = ("REDIS_URL", "DATABASE_URL")


def _requests(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every request of a collection's items, folders walked."""
    for item in items:
        if "item" in item:
            yield from _requests(item["item"])
        else:
            yield item


def _template(path: str) -> re.Pattern[str]:
    """A path template of the OpenAPI document (`/v1/jobs/{job_id}`) as a pattern."""
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")


def _served_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path template) of every operation of the OpenAPI document and of every rule of
    the Flask url_map, but for what is not the API (the page and its static files, which
    tests/page/test_browser.py drives in a real browser)."""
    app = create_app({"settings": make_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")})
    document = app.test_client().get("/openapi.json").json
    assert document is not None
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint not in NOT_THE_API:
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            operations |= {(method, path) for method in (rule.methods or set()) & _METHODS}
    return operations


def test_the_collection_covers_every_route(tmp_path: Path) -> None:
    operations = _served_operations(tmp_path)
    collection = json.loads(COLLECTION.read_text())
    requests = list(_requests(collection["item"]))
    names = [request["name"] for request in requests]
    assert len(names) == len(set(names)), "request names must be unique: newman's report uses them"
    # Literal paths first, so that /v1/jobs is not read as /v1/jobs/{job_id}.
    templates = sorted({path for _method, path in operations}, key=lambda path: "{" in path)
    covered: set[tuple[str, str]] = set()
    for request in requests:
        raw = request["request"]["url"]["raw"]
        assert raw.startswith("{{baseUrl}}/"), raw
        path = raw.removeprefix("{{baseUrl}}").split("?")[0]
        template = next((t for t in templates if _template(t).match(path)), None)
        operation = (request["request"]["method"], template)
        assert operation in operations, f"{request['name']}: {operation[0]} {path} is not served"
        covered.add(operation)
    missing = sorted(operations - covered)
    assert not missing, f"routes without a Postman request: {missing}"


def test_the_environment_names_the_url_and_the_key() -> None:
    environment = json.loads(ENVIRONMENT.read_text())
    assert {value["key"] for value in environment["values"]} == {"baseUrl", "apiKey"}
    collection = json.loads(COLLECTION.read_text())
    assert collection["auth"]["type"] == "bearer"
    assert collection["auth"]["bearer"][0]["value"] == "{{apiKey}}"


@pytest.fixture
def api_key(service: Service) -> Iterator[str]:
    """A key made with the operator's command against the shared (keyed) service's database,
    revoked afterwards."""
    env = {key: value for key, value in os.environ.items() if key not in _SERVICE_URLS}
    env["DATA_DIR"] = str(service.log.parent)
    made = created(env, "postman")
    try:
        yield made["secret"]
    finally:
        assert keys_command(env, "revoke", made["id"]).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(not NEWMAN.exists(), reason="no newman: scripts/bootstrap.sh --dev installs it")
def test_newman_runs_the_collection(service: Service, api_key: str, tmp_path: Path) -> None:
    report = tmp_path / "newman.json"
    command = [
        str(NEWMAN), "run", str(COLLECTION), "-e", str(ENVIRONMENT), "--working-dir", str(POSTMAN),
        "--env-var", f"baseUrl={service.url}", "--env-var", f"apiKey={api_key}",
        "--reporters", "cli,json", "--reporter-json-export", str(report), "--color", "off",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]

    run = json.loads(report.read_text())["run"]
    assert not run["failures"] and run["error"] is None
    stats = run["stats"]
    collection = json.loads(COLLECTION.read_text())
    requests = {request["name"] for request in _requests(collection["item"])}
    ran = {execution["item"]["name"] for execution in run["executions"]}
    assert ran == requests
    untested = [e["item"]["name"] for e in run["executions"] if not e.get("assertions")]
    assert not untested, f"answers without a test: {untested}"
    assert stats["assertions"]["total"] >= stats["requests"]["total"] >= len(requests)
    assert stats["assertions"]["failed"] == 0 and stats["testScripts"]["failed"] == 0

    key = {"Authorization": f"Bearer {api_key}"}
    listed = service.http.get(f"{service.url}/v1/jobs?limit=100", headers=key, timeout=10).json()
    jobs = listed["data"]
    assert len(jobs) >= 10
    assert not [job["id"] for job in jobs if job["status"] not in TERMINAL], "jobs left unfinished"
