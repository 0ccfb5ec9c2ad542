"""Metrics and logs of the running service: /metrics scraped and parsed after a few jobs (the
worker's figures read through the API's), who may read it, and every log line one JSON object
with its request's or job's id and no secret (fast fake engines: this is about the plumbing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.health import QUIET_PATHS
from harness.stack import FAST_ENGINES, Stack, free_port
from models.api_keys import create_key
from models.db import make_engine, make_session_factory
from models.logging_config import REDACTED, redact
from tests.conftest import make_settings, tone, wav_bytes

# More words than EchoGenerator's 2048-token context holds with room for the reply.
TOO_LONG = "a " * 1990


class Ran:
    """A keyed stack that ran a few jobs, and what was sent."""

    def __init__(self, stack: Stack, secret: str, jobs: dict[str, dict[str, Any]]) -> None:
        self.stack = stack
        self.secret = secret
        self.jobs = jobs


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    data_dir = tmp_path_factory.mktemp("observed")
    stack = Stack(data_dir, **FAST_ENGINES, WORKER_METRICS_PORT=str(free_port()))
    engine = make_engine(stack.env["DATABASE_URL"])
    with make_session_factory(engine)() as session:
        secret = create_key(session, "observer").secret
    engine.dispose()
    with stack.serving():
        stack.http.headers["Authorization"] = f"Bearer {secret}"
        wav = wav_bytes(tone(1.0), 16_000)
        sent = {
            "text": stack.submit(json={"text": "What is the capital of France?"}),
            "spoken reply": stack.submit(json={"text": "Say hello.", "reply": "voice"}),
            "spoken prompt": stack.submit(
                data={"reply": "text"}, files={"audio": ("q.wav", wav, "audio/wav")}
            ),
            "too long": stack.submit(json={"text": TOO_LONG}),
        }
        jobs = {name: stack.wait(job_id) for name, job_id in sent.items()}
        yield Ran(stack, secret, jobs)


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family: Any, suffix: str = "", **labels: str) -> float:
    found = [
        sample.value
        for sample in family.samples
        if sample.name == family.name + suffix
        and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    return float(found[0])


@pytest.mark.e2e
def test_metrics_count_the_jobs_their_stages_and_the_workers(ran: Ran) -> None:
    statuses = {
        name: (job["status"], (job.get("error") or {}).get("code"))
        for name, job in ran.jobs.items()
    }
    assert statuses["too long"] == ("failed", "context_length_exceeded"), statuses
    assert all(
        status == ("succeeded", None) for name, status in statuses.items() if name != "too long"
    )

    # No API key needed (the request comes from this machine): /metrics is no /v1 route.
    answer = ran.stack.http.get(
        f"{ran.stack.url}/metrics", headers={"Authorization": ""}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = _families(answer.text)

    finished = families["voicechat_jobs_finished"]
    assert _value(finished, "_total", status="succeeded", code="none") == 3
    assert _value(finished, "_total", status="failed", code="context_length_exceeded") == 1
    # Recorded in the worker's pool child only: read here through the shared folder.
    stages = families["voicechat_stage_seconds"]
    assert _value(stages, "_count", stage="transcribe") == 1
    assert _value(stages, "_count", stage="generate") == 3
    assert _value(stages, "_count", stage="synthesize") == 1
    assert _value(families["voicechat_time_to_first_audio_seconds"], "_count") == 1
    assert _value(families["voicechat_worker_models_loaded"]) == 1

    assert _value(families["voicechat_broker_up"]) == 1
    assert _value(families["voicechat_queue_depth"]) == 0
    assert _value(families["voicechat_workers_ready"]) == 1

    # The worker's own server (WORKER_METRICS_PORT, for workers on other hosts): the same sums.
    own = requests.get(f"http://127.0.0.1:{ran.stack.env['WORKER_METRICS_PORT']}/", timeout=30)
    own_families = _families(own.text)
    assert _value(own_families["voicechat_stage_seconds"], "_count", stage="generate") == 3
    assert _value(own_families["voicechat_worker_models_loaded"]) == 1

    requests_ = families["voicechat_http_requests"]
    assert _value(requests_, "_total", route="/v1/jobs", method="POST", status="202") == 4
    seconds = families["voicechat_http_request_seconds"]
    assert _value(seconds, "_count", route="/v1/jobs", method="POST") == 4
    # The stack's start asked /readyz until it answered, and this scrape asked /metrics: neither
    # is counted.
    routes = {sample.labels["route"] for sample in requests_.samples}
    assert not routes & {"/healthz", "/readyz", "/metrics"}, routes


@pytest.mark.e2e
def test_every_log_line_is_json_with_its_ids_and_no_secret(ran: Ran) -> None:
    ran.stack.http.get(f"{ran.stack.url}/v1/jobs", timeout=30)  # one more request line
    assert ran.stack.http.get(f"{ran.stack.url}/healthz", timeout=30).status_code == 200
    refused = ran.stack.http.get(
        f"{ran.stack.url}/v1/jobs",
        headers={"Authorization": "Bearer vc_notakey_0123456789"},
        timeout=30,
    )
    assert refused.status_code == 401
    job_ids = {job["id"] for job in ran.jobs.values()}
    seen_jobs: set[str] = set()
    request_lines = 0
    for log in ("api.log", "worker-1.log"):
        text = (ran.stack.data_dir / log).read_text()
        assert ran.secret not in text and "vc_notakey_0123456789" not in text, log
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{log}:{number} is not JSON: {line!r}")
            assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(
                record
            )
            if record["logger"] == "gunicorn.access":
                assert len(record.get("request_id") or "") >= 16, line
                assert record["path"] not in QUIET_PATHS, line  # asked every few seconds
                request_lines += 1
            for job_id in job_ids:  # a job's lines (an access line is its request's)
                if job_id in record["message"] and record["logger"] != "gunicorn.access":
                    assert record.get("job_id") == job_id, line
            if record.get("job_id") in job_ids:
                seen_jobs.add(record["job_id"])
            if "request refused" in record["message"]:
                assert record.get("request_id") == refused.headers["X-Request-ID"], line
    assert request_lines >= 6
    assert seen_jobs == job_ids  # every job's lines in the worker carry its id


def test_metrics_need_the_token_when_set_and_survive_a_dead_redis(tmp_path: Path) -> None:
    dead = "redis://127.0.0.1:1/0"
    token = "metrics-token-0123456789"
    keyed = create_app({"settings": make_settings(tmp_path, REDIS_URL=dead, METRICS_TOKEN=token)})
    client = keyed.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json is not None
    assert refused.json["code"] == "invalid_metrics_token"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    families = _families(answer.get_data(as_text=True))
    assert _value(families["voicechat_broker_up"]) == 0  # Redis is down: the scrape is not
    assert "voicechat_queue_depth" not in families

    local = create_app({"settings": make_settings(tmp_path, REDIS_URL=dead)}).test_client()
    assert local.get("/metrics").status_code == 200  # from loopback
    remote = local.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert remote.status_code == 403 and remote.json is not None
    assert remote.json["code"] == "metrics_not_allowed"
    proxied = local.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"})
    assert proxied.status_code == 403


@pytest.mark.parametrize(
    "line",
    [
        "key vc_Qm9vYmF6cXV4MTIzNDU2Nzg5MA and more",
        '{"auth": "Bearer abcdefgh12345678"}',
        "secret whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
        "redis://user:p4ssw0rd@host:6379/0",
        "Authorization: BASIC abcdefgh12345678",  # the marks are looked for in any case
        "authorization: BeArEr abcdefgh12345678",
    ],
)
def test_secrets_are_redacted_from_any_line(line: str) -> None:
    cleaned = redact(line)
    assert REDACTED in cleaned
    assert not any(part in cleaned for part in ("Qm9vYmF6", "abcdefgh1234", "QUJDREVG", "p4ssw0rd"))
