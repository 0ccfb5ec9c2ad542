"""The Host check, the Origin check and CORS, on the app with a real Redis and database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from api.origins import host_allowed, origin_allowed
from models.tables import Job

APP_ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": APP_ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-unlisted",
}


def _jobs(client: Any) -> int:
    with client.application.extensions["voicechat.sessions"]() as session:
        return int(session.scalar(select(func.count()).select_from(Job)))


def test_host_names_and_origins_are_matched_exactly_but_for_the_port() -> None:
    allowed = ("localhost", "127.0.0.1", "[::1]")
    assert host_allowed("localhost:8000", allowed) and host_allowed("[::1]:8000", allowed)
    assert not host_allowed("localhost.evil.example", allowed)
    assert not host_allowed("evil.example:8000", allowed)
    assert host_allowed("anything", ("*",))
    assert origin_allowed("http://localhost:8000", "localhost:8000", ())
    assert not origin_allowed("http://localhost:9000", "localhost:8000", ())
    assert not origin_allowed("null", "localhost:8000", ())
    assert origin_allowed("HTTPS://App.Example/", "localhost:8000", (APP_ORIGIN,))


def test_a_request_for_another_host_is_refused_with_421(
    open_client_with: Callable[..., Any],
) -> None:
    client = open_client_with()
    refused = client.get("/v1/jobs", headers={"Host": "rebound.example:8000"})
    assert refused.status_code == 421
    assert refused.json["code"] == "host_not_allowed"
    openai = client.get("/v1/models", headers={"Host": "rebound.example"})
    assert openai.status_code == 421 and openai.json["error"]["code"] == "host_not_allowed"
    assert client.get("/healthz", headers={"Host": "10.0.0.5:8000"}).status_code == 200
    assert client.get("/v1/jobs", headers={"Host": "127.0.0.1:8000"}).status_code == 200

    named = open_client_with(ALLOWED_HOSTS="voice.example")
    assert named.get("/v1/jobs", headers={"Host": "voice.example:443"}).status_code == 200
    assert named.get("/v1/jobs", headers={"Host": "localhost"}).status_code == 421


def test_no_cors_unless_origins_are_configured(open_client_with: Callable[..., Any]) -> None:
    client = open_client_with()
    same = client.get("/v1/jobs", headers={"Origin": "http://localhost"})
    assert same.status_code == 200
    assert not [name for name, _ in same.headers if name.startswith("Access-Control")]
    preflight = client.options("/v1/jobs", headers=PREFLIGHT)
    assert preflight.status_code == 403 and preflight.json["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in preflight.headers

    configured = open_client_with(CORS_ORIGINS=APP_ORIGIN)
    preflight = configured.options("/v1/jobs", headers=PREFLIGHT)
    assert preflight.status_code == 204 and "Content-Type" not in preflight.headers
    assert preflight.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    allowed_headers = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "x-unlisted" not in allowed_headers
    answer = configured.post("/v1/jobs", json={"text": "hello"}, headers={"Origin": APP_ORIGIN})
    assert answer.status_code == 202
    assert answer.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Location" in answer.headers["Access-Control-Expose-Headers"]
    assert "Origin" in answer.headers["Vary"]
    other = configured.options("/v1/jobs", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers


def test_a_cross_site_form_post_cannot_submit_in_open_mode(
    open_client_with: Callable[..., Any],
) -> None:
    client = open_client_with()
    form = {"text": "Submitted by a page the user happened to visit."}
    refused = client.post("/v1/jobs", data=form, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json["code"] == "origin_not_allowed"
    hidden = client.post("/v1/jobs", data=form, headers={"Origin": "null"})
    assert hidden.status_code == 403
    no_origin = client.post("/v1/jobs", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert no_origin.status_code == 403
    assert _jobs(client) == 0
    own_page = client.post("/v1/jobs", data=form, headers={"Origin": "http://localhost"})
    assert own_page.status_code == 202 and _jobs(client) == 1
