"""The served OpenAPI document: valid OpenAPI 3.1, every route, the running settings' limits,
and patterns that say exactly what the service reads."""

from __future__ import annotations

import functools
import operator
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from alembic import command
from alembic.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from api import create_app
from api.openapi import NOT_THE_API
from api.preferences import PREFER_PATTERN, wait_preference
from models.errors import InvalidCursor, InvalidHeader
from models.queries import CURSOR_PATTERN, decode_cursor, encode_cursor
from models.tables import Job, new_job_id
from tests.conftest import ROOT, make_settings


def test_document_is_valid_and_complete(tmp_path: Path) -> None:
    app = create_app({"settings": make_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")})
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document is not None
    validate(document, cls=OpenAPIV31SpecValidator)
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_THE_API
    }
    assert routes == set(document["paths"])
    # Left out: the static files and the page for people (api/page.py), and nothing else.
    left_out = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint in NOT_THE_API}
    assert left_out == {"/", "/static/<path:filename>"}
    assert "/" not in document["paths"]
    assert app.test_client().get("/").status_code == 200


def _property(document: dict[str, Any], shape: str, name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][shape]["properties"][name]
    return schema


def test_document_and_validation_take_the_running_limits(tmp_path: Path, redis_server: str) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=url, configure_logger=False)
    command.upgrade(config, "head")
    settings = make_settings(
        tmp_path,
        DATABASE_URL=url,
        REDIS_URL=redis_server,
        MAX_TEXT_CHARS="1234",
        MAX_TOKENS_LIMIT="77",
        DEFAULT_MAX_TOKENS="50",
        TTS_VOICES="en_US-joe-medium,en_US-amy-low",
    )
    client = create_app({"settings": settings}).test_client()
    document = client.get("/openapi.json").json
    assert document is not None
    validate(document, cls=OpenAPIV31SpecValidator)

    assert _property(document, "TextJobRequest", "text")["maxLength"] == 1234
    assert _property(document, "UploadJobRequest", "text")["maxLength"] == 1234
    assert _property(document, "TextJobForm", "text")["maxLength"] == 1234
    max_tokens = _property(document, "TextJobRequest", "max_tokens")
    assert max_tokens["anyOf"][0]["maximum"] == 77 and max_tokens["default"] == 50
    voices = _property(document, "TextJobRequest", "voice")["anyOf"][0]["enum"]
    assert voices == ["en_US-joe-medium", "en_US-amy-low"]
    raw_wav_options = {p["name"]: p for p in document["paths"]["/v1/jobs"]["post"]["parameters"]}
    assert raw_wav_options["max_tokens"]["schema"]["maximum"] == 77

    refused = client.post("/v1/jobs", json={"text": "a" * 1235})
    assert refused.status_code == 422
    assert refused.json is not None and refused.json["code"] == "text_too_long"
    assert refused.json["field"] == "text" and "1234" in refused.json["detail"]
    assert client.post("/v1/jobs", json={"text": "a" * 1234}).status_code == 202

    too_many = client.post("/v1/jobs", json={"text": "hi", "max_tokens": 78})
    assert too_many.status_code == 422
    assert too_many.json is not None and too_many.json["field"] == "max_tokens"
    assert client.post("/v1/jobs", json={"text": "hi", "max_tokens": 77}).status_code == 202
    assert client.post("/v1/jobs", data={"text": "hi", "voice": "en_US-amy-low"}).status_code == 202


def _matches(pattern: str, value: str) -> bool:
    """Whether `value` matches `pattern` as Python reads it and as schemathesis's validator
    (jsonschema-rs, ECMA-262 patterns) does; the two must agree."""
    python = re.fullmatch(pattern, value) is not None
    assert python == _validator(pattern).is_valid(value), value
    return python


@functools.cache
def _validator(pattern: str) -> Any:
    return jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


# What a `Prefer` value is made of where the service and the pattern could disagree.
_PREFER_PARTS = st.text(st.sampled_from(list('wWaAiItT=;,"07 \t\x0b\xa0x')), max_size=16)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        _PREFER_PARTS,
        st.builds(
            operator.add,
            st.sampled_from(["wait=", " WAIT = ", "wai", "w ait", "waitx", "a, wait="]),
            _PREFER_PARTS,
        ),
        st.text(st.characters(max_codepoint=255), max_size=24),
    )
)
def test_the_prefer_pattern_is_what_the_service_reads(value: str) -> None:
    try:
        wait_preference(value)
        read = True
    except InvalidHeader:
        read = False
    assert _matches(PREFER_PATTERN, value) == read


@settings(max_examples=300, deadline=None)
@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_of_the_pattern_is_read(cursor: str) -> None:
    assert _matches(CURSOR_PATTERN, cursor)
    created_at, job_id = decode_cursor(cursor)
    assert created_at.tzinfo is not None and len(job_id) == 32


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_no_other_cursor_is_read(cursor: str) -> None:
    if not _matches(CURSOR_PATTERN, cursor):
        with pytest.raises(InvalidCursor):
            decode_cursor(cursor)


def test_a_cursor_made_is_of_the_pattern_and_read_back() -> None:
    job = Job(id=new_job_id(), created_at=datetime(2026, 11, 22, 8, 30, 1, 250, tzinfo=UTC))
    cursor = encode_cursor(job)
    assert _matches(CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor) == (job.created_at, job.id)
