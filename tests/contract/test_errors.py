"""Every rejection over HTTP against the running service: status, problem+json, stable code.

After each one the service must still answer, and nothing may come back as a 5xx.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from tests.conftest import Service, tone, wav_bytes

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
WAV = {"Content-Type": "audio/wav"}


def _wav(seconds: float = 1.0) -> bytes:
    return wav_bytes(tone(seconds), 16_000)


def _truncated() -> bytes:
    data = _wav(2.0)
    return data[: len(data) // 2]


def _claims_hours() -> bytes:
    header = bytearray(_wav(0.01)[:44])
    struct.pack_into("<I", header, 40, 16_000 * 2 * 3600 * 5)
    return bytes(header) + b"\x00" * 64


def _mp3_in_wav() -> bytes:
    data = bytearray(_wav())
    struct.pack_into("<H", data, 20, 0x0055)
    return bytes(data)


def _header_field(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(_wav())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def _over_ten_minutes() -> bytes:
    return wav_bytes(np.zeros((601 * 8_000, 1), np.float32), 8_000, subtype="PCM_U8")


JSON_CASES: dict[str, tuple[Any, int, str]] = {
    "empty object": ({}, 400, "missing_input"),
    "empty text": ({"text": ""}, 422, "empty_text"),
    "whitespace text": ({"text": " \n\t "}, 422, "empty_text"),
    "text too long": ({"text": "a" * 4001}, 422, "text_too_long"),
    "text not a string": ({"text": 42}, 422, "invalid_option"),
    "text with NUL": ({"text": "hi\u0000there"}, 422, "invalid_option"),
    "unknown reply": ({"text": "hi", "reply": "shout"}, 422, "invalid_option"),
    "reply not a string": ({"text": "hi", "reply": ["voice"]}, 422, "invalid_option"),
    "max_tokens string": ({"text": "hi", "max_tokens": "10"}, 422, "invalid_option"),
    "max_tokens boolean": ({"text": "hi", "max_tokens": True}, 422, "invalid_option"),
    "max_tokens fraction": ({"text": "hi", "max_tokens": 1.5}, 422, "invalid_option"),
    "max_tokens zero": ({"text": "hi", "max_tokens": 0}, 422, "invalid_option"),
    "max_tokens huge": ({"text": "hi", "max_tokens": 10**12}, 422, "invalid_option"),
    "temperature negative": ({"text": "hi", "temperature": -0.1}, 422, "invalid_option"),
    "temperature too hot": ({"text": "hi", "temperature": 2.5}, 422, "invalid_option"),
    "temperature string": ({"text": "hi", "temperature": "warm"}, 422, "invalid_option"),
    "system not a string": ({"text": "hi", "system": {"role": "x"}}, 422, "invalid_option"),
    "system too long": ({"text": "hi", "system": "s" * 4001}, 422, "invalid_option"),
    "unknown voice": ({"text": "hi", "voice": "hal9000"}, 422, "invalid_option"),
    "unknown field": ({"text": "hi", "prompt": "hi"}, 422, "invalid_option"),
    "audio in JSON": ({"audio": "UklGRg=="}, 422, "invalid_option"),
}


def _expect(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body = dict(response.json())
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    return body


@pytest.fixture
def healthy_after(service: Service) -> Any:
    yield service
    assert service.http.get(f"{service.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize(("body", "status", "code"), JSON_CASES.values(), ids=JSON_CASES.keys())
def test_json_rejections(healthy_after: Service, body: Any, status: int, code: str) -> None:
    response = healthy_after.http.post(f"{healthy_after.url}/v1/jobs", json=body, timeout=30)
    problem = _expect(response, status, code)
    if code == "invalid_option":
        assert problem["field"]


@pytest.mark.parametrize(
    "raw",
    [b'{"text": ', b"[1, 2]", b"\xff\xfe", b'{"text": NaN}', b"1" * 5000, b"[" * 100_000],
)
def test_malformed_json(healthy_after: Service, raw: bytes) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs",
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    detail = _expect(response, 400, "malformed_json")["detail"]
    assert "sys." not in detail and "recursion" not in detail  # said in the client's terms


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\nnot really\r\n"),
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data\r\n\r\nab"),
    ],
    ids=["no boundary", "cut off"],
)
def test_malformed_multipart(healthy_after: Service, content_type: str, body: bytes) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs",
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    _expect(response, 400, "malformed_multipart")


def test_both_text_and_audio(healthy_after: Service) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs",
        data={"text": "hi"},
        files={"audio": ("a.wav", _wav(), "audio/wav")},
        timeout=30,
    )
    _expect(response, 400, "conflicting_input")


def test_neither_text_nor_audio_in_a_form(healthy_after: Service) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs", files={"reply": (None, "voice")}, timeout=30
    )
    _expect(response, 400, "missing_input")


def test_body_over_the_limit(healthy_after: Service) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs",
        data=b"\x00" * (25 * 1024 * 1024 + 1),
        headers=WAV,
        timeout=60,
    )
    _expect(response, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "audio/x-aiff", None])
def test_unsupported_content_type(healthy_after: Service, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs", data=b"hello", headers=headers, timeout=30
    )
    _expect(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "send",
    ["raw", "multipart"],
)
def test_audio_that_is_not_a_wav_whatever_the_label(healthy_after: Service, send: str) -> None:
    ogg = b"OggS\x00\x02" + b"\x00" * 500
    if send == "raw":
        kwargs: dict[str, Any] = {"data": ogg, "headers": WAV}
    else:
        kwargs = {"files": {"audio": ("question.wav", ogg, "audio/wav")}}
    response = healthy_after.http.post(f"{healthy_after.url}/v1/jobs", timeout=30, **kwargs)
    _expect(response, 415, "unsupported_audio_format")


AUDIO_CASES = {
    "truncated": (_truncated, "audio_truncated"),
    "header claims hours": (_claims_hours, "audio_truncated"),
    "zero bytes": (lambda: b"", "empty_audio"),
    "no samples": (lambda: wav_bytes(np.zeros((0, 1), np.float32), 16_000), "empty_audio"),
    "over ten minutes": (_over_ten_minutes, "audio_too_long"),
    "undecodable encoding": (_mp3_in_wav, "unsupported_audio_encoding"),
    "corrupt": (lambda: b"RIFF\x24\x00\x00\x00WAVEjunk\x04\x00\x00\x00abcd", "invalid_audio"),
    "8 channels": (lambda: wav_bytes(tone(0.2, 16_000, 8), 16_000), "unsupported_audio_channels"),
    "1 Hz": (lambda: _header_field(24, "<I", 1), "unsupported_sample_rate"),
    "2^31-1 Hz": (lambda: _header_field(24, "<I", 2**31 - 1), "unsupported_sample_rate"),
    "1024 channels": (lambda: _header_field(22, "<H", 1024), "unsupported_audio_channels"),
}


@pytest.mark.parametrize(("make", "code"), AUDIO_CASES.values(), ids=AUDIO_CASES.keys())
@pytest.mark.parametrize("send", ["raw", "multipart"])
def test_audio_rejections(healthy_after: Service, make: Any, code: str, send: str) -> None:
    data = make()
    if send == "raw":
        kwargs: dict[str, Any] = {"data": data, "headers": WAV}
    else:
        kwargs = {"files": {"audio": ("x.wav", data, "audio/wav")}}
    response = healthy_after.http.post(f"{healthy_after.url}/v1/jobs", timeout=60, **kwargs)
    _expect(response, 422, code)


@pytest.mark.parametrize(
    "params",
    [{"reply": "loud"}, {"max_tokens": "-3"}, {"temperature": "nan"}, {"colour": "red"}],
)
def test_query_options_of_a_raw_wav(healthy_after: Service, params: dict[str, str]) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs", data=_wav(), headers=WAV, params=params, timeout=30
    )
    _expect(response, 422, "invalid_option")


def test_query_options_are_checked_whatever_the_body(healthy_after: Service) -> None:
    # Only a raw recording's are used, but the document declares them for every body.
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs", json={"text": "hi"}, params={"reply": "loud"}, timeout=30
    )
    assert _expect(response, 422, "invalid_option")["field"] == "reply"


def test_a_conversation_body_of_whitespace_is_no_json(healthy_after: Service) -> None:
    response = healthy_after.http.post(
        f"{healthy_after.url}/v1/conversations",
        data=b" \r\n",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    _expect(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"text": "hi", "max_tokens": "many"}, "invalid_option"),
        ({"text": "hi", "max_tokens": "9" * 5000}, "invalid_option"),
        ({"text": "  "}, "empty_text"),
        ({"text": "hi", "reply": "VOICE"}, "invalid_option"),
        ({"text": "hi", "audio": "not a file"}, "invalid_option"),
    ],
)
def test_form_field_rejections(healthy_after: Service, fields: dict[str, str], code: str) -> None:
    response = healthy_after.http.post(f"{healthy_after.url}/v1/jobs", data=fields, timeout=30)
    _expect(response, 422, code)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/jobs/0123456789abcdef0123456789abcdef", "job_not_found"),
        ("/v1/jobs/not-a-job-id", "job_not_found"),
        ("/v1/jobs/x/audio", "job_not_found"),
        ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "not_found"),
    ],
)
def test_unknown_job(healthy_after: Service, path: str, code: str) -> None:
    response = healthy_after.http.get(healthy_after.url + path, timeout=10)
    _expect(response, 404, code)


def test_unknown_route_and_method(healthy_after: Service) -> None:
    _expect(healthy_after.http.get(f"{healthy_after.url}/v2/nothing", timeout=10), 404, "not_found")
    response = healthy_after.http.delete(f"{healthy_after.url}/v1/jobs", timeout=10)
    _expect(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"limit": "9" * 2000},
        {"cursor": "garbage!"},
        {"cursor": ""},
        {"cursor": "MjAyNi0xMS0yMnxhYmM"},  # the base64 of an earlier cursor form
        {"sort": "asc"},
    ],
)
def test_listing_rejections(healthy_after: Service, params: dict[str, str]) -> None:
    response = healthy_after.http.get(f"{healthy_after.url}/v1/jobs", params=params, timeout=10)
    code = "invalid_cursor" if "cursor" in params else "invalid_option"
    _expect(response, 422, code)


def test_rejections_store_nothing(healthy_after: Service) -> None:
    before = healthy_after.http.get(f"{healthy_after.url}/v1/jobs?limit=100", timeout=10).json()
    healthy_after.http.post(
        f"{healthy_after.url}/v1/jobs", data=_truncated(), headers=WAV, timeout=30
    )
    healthy_after.http.post(f"{healthy_after.url}/v1/jobs", json={"text": ""}, timeout=30)
    after = healthy_after.http.get(f"{healthy_after.url}/v1/jobs?limit=100", timeout=10).json()
    assert [job["id"] for job in after["data"]] == [job["id"] for job in before["data"]]
