"""Hostile input: any bytes into the audio validators, and schemathesis against /openapi.json.

The validator may only ever answer with an `AudioInfo` or a domain error; the API may never
answer a generated request with a 5xx or with a response its own document does not describe,
nor refuse a request the document calls valid, nor take one it calls invalid.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.errors import SerializationNotPossible
from schemathesis.generation import GenerationMode, overrides
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import NO_FEEDBACK
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from api.jobs import REQUEST_LINE_BYTES
from api.openai.formats import SPEECH_FORMATS, TRANSCRIPTION_FORMATS
from api.submission import AUDIO_MEDIA_TYPES
from harness.stack import FAST_ENGINES, Stack
from models.audio import AudioInfo, inspect_upload, inspect_wav
from models.errors import VoiceChatError
from tests.conftest import make_settings, tone, wav_bytes
from tests.recordings import FORMATS, encode

VALID = [
    wav_bytes(tone(0.2, 8_000), 8_000),
    wav_bytes(tone(0.2, 44_100, 2), 44_100, subtype="FLOAT"),
    wav_bytes(tone(0.2, 16_000, 2), 16_000, subtype="PCM_24", fmt="WAVEX"),
    wav_bytes(tone(0.2, 16_000), 16_000, subtype="MS_ADPCM"),
]


def _check(data: bytes) -> None:
    try:
        info = inspect_wav(data, max_seconds=5.0)
    except VoiceChatError:
        return
    assert isinstance(info, AudioInfo)
    assert info.frames > 0 and info.sample_rate > 0 and info.seconds <= 5.0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_audio_info_or_a_domain_error(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_after_a_wav_header_give_audio_info_or_a_domain_error(tail: bytes) -> None:
    _check(b"RIFF" + struct.pack("<I", len(tail) + 4) + b"WAVE" + tail)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_mutated_wavs_give_audio_info_or_a_domain_error(
    valid: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    _check(_mutated(valid, flips, cut))


def _mutated(valid: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    """`valid` cut short by `cut` bytes, with each (offset, value) of `flips` written over it
    (offsets drawn small: the header region, where parsers break)."""
    data = bytearray(valid[: max(0, len(valid) - cut)])
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    return bytes(data)


COMPRESSED = [encode(wav_bytes(tone(0.4, 22_050), 22_050), kind) for kind in FORMATS]
LIMITS = make_settings(Path("/nonexistent"), MAX_AUDIO_SECONDS="5")


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(COMPRESSED),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    st.integers(0, 8192),
)
def test_mutated_recordings_give_audio_info_or_a_domain_error(
    valid: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    """WebM, Ogg, MP3, M4A and FLAC with bytes changed (their headers first) and cut short:
    PyAV may only ever answer through a domain error."""
    try:
        info = inspect_upload(_mutated(valid, flips, cut), LIMITS)
    except VoiceChatError:
        return
    assert info.frames > 0 and info.sample_rate > 0 and info.seconds <= 5.25


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service with an API key, so that every /v1 route checks one; `stack.http` sends it.

    schemathesis's `ignored_auth` probes nothing here: the document lets a request go without a
    key (for the open mode), so the 401 without one is checked by hand below.
    """
    # The fast engines: the subject is the HTTP surface, and generated jobs finish at once. The
    # stack is keyed (harness/stack.py): `stack.http` sends its key.
    stack = Stack(tmp_path_factory.mktemp("schemathesis"), **FAST_ENGINES)
    with stack.serving():
        assert requests.get(f"{stack.url}/v1/jobs", timeout=10).status_code == 401
        yield stack


WAV = wav_bytes(tone(0.3, 16_000), 16_000)
load_all_checks()
# Every check schemathesis has, the stateful ones (use_after_free, ensure_resource_availability)
# and the two that hold the document to the code both ways (positive_data_acceptance: what it
# calls valid is accepted; negative_data_rejection: what it calls invalid is refused).
ALL_CHECKS = CHECKS.get_all()


def _document(stack: Stack) -> OpenApiSchema:
    """The served document, its requests sent to `stack` with its API key."""
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    key = stack.http.headers["Authorization"]
    schema.config.update(base_url=stack.url, headers={"Authorization": key}, request_timeout=30)
    # An invalid value long enough to push the request line over REQUEST_LINE_BYTES is refused
    # by gunicorn with the documented 414, before the service sees it: a rejection too.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "414"]
    schema.hook("map_case")(_semantically_valid)
    return schema


def _semantically_valid(ctx: Any, case: schemathesis.Case) -> schemathesis.Case:
    """Fills in what the document states in prose but JSON Schema cannot say.

    An uploaded recording must be real audio, a chat's last message is the user's, a webhook's
    host must resolve to public addresses, an `Idempotency-Key` is new unless it comes with
    the same request, and a raw recording's options fit in the request line: these are
    documented in the descriptions, and a generated valid request gets them here, so that every
    other schema-valid value must be accepted. An invalid one is left as generated: it must be
    refused whatever else it holds.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    body = case.body
    # The webhook tests cover webhooks; their targets here would not resolve.
    for fields in (case.query, body):
        if isinstance(fields, dict):
            fields.pop("webhook", None)
            fields.pop("webhook_events", None)
    # The request line holds the method, the path and the query.
    if len(urlencode(case.query or {}, doseq=True)) > REQUEST_LINE_BYTES - 100:
        case.query.pop("system", None)
    if case.media_type in AUDIO_MEDIA_TYPES:  # the bytes decide: a WAV is good under any
        case.body = WAV
    elif isinstance(body, dict):
        for part in ("audio", "file"):
            if part in body:
                body[part] = WAV
        if "audio" in body:  # the document's oneOf, which schemathesis cannot check beside bytes
            body.pop("text", None)
        messages = body.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            messages[-1]["role"] = "user"
    return case


@pytest.mark.e2e
def test_api_conforms_to_its_document(api_stack: Stack) -> None:
    """Every operation, with bounded generated requests, valid and invalid, under every check:
    no 5xx, responses as documented, every request the document calls valid accepted and every
    one it calls invalid refused (a document looser or stricter than the code fails)."""
    operations = [result.ok() for result in _document(api_stack).get_all_operations()]
    assert len(operations) >= 6
    nothing_to_negate = []

    for operation in operations:
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=40,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,  # a bounded run, the same in CI as here
            )
            def conforms(case: schemathesis.Case) -> None:
                try:
                    case.call_and_validate(checks=ALL_CHECKS)
                except SerializationNotPossible:
                    # An invalid body drawn for a raw recording's media type (audio/*) may be a
                    # value schemathesis cannot send as one: no request was made, so no example.
                    reject()

            try:
                conforms()
            except Unsatisfiable:  # no parameter, or only free text: no request is invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
                nothing_to_negate.append(operation.label)
    assert nothing_to_negate == [
        "GET /v1/models",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /docs",
        "GET /docs/{file_name}",
    ]


@pytest.mark.e2e
def test_api_conforms_at_its_boundaries(api_stack: Stack) -> None:
    """Schemathesis's coverage phase, as `st run` has it: for every operation, each bound,
    pattern, missing field and wrong type of the document, valid and invalid, under every
    check. Driven here by the generator the CLI and the pytest plugin use: the plugin's
    `parametrize` fails on pytest 9 (it reads `Function._nodeid`)."""
    schema = _document(api_stack)
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = CoverageGenerator(
            operation=operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
            auth_storage=None,
            override=overrides.with_config_headers(schema.config, operation=operation),
            feedback=NO_FEEDBACK,
        )
        for case in cases:
            case.call_and_validate(checks=ALL_CHECKS)
            sent += 1
    assert sent > 500


@pytest.mark.e2e
def test_api_conforms_in_sequences_of_calls(api_stack: Stack) -> None:
    """Schemathesis's stateful phase: calls chained by the links it infers (a job listed, then
    read, followed, cancelled, its audio fetched...), each answer under every check."""
    # Scenarios start from listings (a made job is no root: schemathesis takes its
    # `conversation_id` for an input that nothing makes), so there are jobs to list.
    for reply in ("text", "voice"):
        api_stack.submit(json={"text": "Hello.", "reply": reply})
    machine = _document(api_stack).as_state_machine()

    class Scenarios(machine):  # type: ignore[valid-type, misc]
        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response, checks=ALL_CHECKS, transport_kwargs=kwargs, recorder=self.recorder
            )

    Scenarios.run(
        settings=settings(
            max_examples=150,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.generate],
        )
    )


def _sent(body: Any, media_type: str = "application/json", **parts: Any) -> dict[str, Any]:
    """The parts of a hand-made request with a body."""
    return {"body": body, "media_type": media_type, **parts}


@pytest.mark.e2e
def test_answers_the_fuzzer_cannot_reach_conform(api_stack: Stack) -> None:
    """Requests built by hand: the answers that need a model id, a voice or a live job.

    Generated requests almost never name the served model or a known voice, nor an existing
    job or conversation, so the successful answers of those routes are reached here and checked
    against the document the same way.
    """
    schema = _document(api_stack)
    http, url = api_stack.http, api_stack.url
    key = {"Authorization": str(http.headers["Authorization"])}  # beside a case's own headers
    model = http.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    made = http.post(f"{url}/v1/conversations", json={"system": "Be brief."}, timeout=10)
    conversation_id = made.json()["id"]
    job_id = api_stack.submit(json={"text": "Hello.", "reply": "voice"})
    api_stack.wait(job_id)
    wav = wav_bytes(tone(0.5, 16_000), 16_000)
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 5}
    speech = {"model": "tts-1", "input": "Hello there.", "voice": "alloy"}
    wait = {"Prefer": "wait=30"}
    form = "multipart/form-data"
    # (path, method, expected status, the request's parts)
    cases: list[tuple[str, str, int, dict[str, Any]]] = [
        (
            "/v1/jobs",
            "POST",
            200,
            _sent({"text": "Hi.", "conversation_id": conversation_id}, headers=wait),
        ),
        (
            "/v1/jobs",
            "POST",
            200,
            _sent({"audio": wav, "conversation_id": conversation_id}, form, headers=wait),
        ),
        # The fake generator counts a token a word: 2,000 words leave no room for 1,024 more.
        (
            "/v1/jobs",
            "POST",
            422,
            _sent({"text": "a " * 1000, "system": "b " * 1000, "max_tokens": 1024}, headers=wait),
        ),
        ("/v1/jobs/{job_id}/events", "GET", 200, {"path_parameters": {"job_id": job_id}}),
        (
            "/v1/conversations/{conversation_id}",
            "GET",
            200,
            {"path_parameters": {"conversation_id": conversation_id}},
        ),
        ("/v1/chat/completions", "POST", 200, _sent(chat)),
        (
            "/v1/chat/completions",
            "POST",
            200,
            _sent({**chat, "stream": True, "stream_options": {"include_usage": True}}),
        ),
        *(
            (
                "/v1/audio/transcriptions",
                "POST",
                200,
                _sent({"file": wav, "model": "whisper-1", "response_format": answer}, form),
            )
            for answer in TRANSCRIPTION_FORMATS
        ),
        *(
            ("/v1/audio/speech", "POST", 200, _sent({**speech, "response_format": answer}))
            for answer in SPEECH_FORMATS
        ),
        # Last: nothing of the job is left after it.
        ("/v1/jobs/{job_id}", "DELETE", 204, {"path_parameters": {"job_id": job_id}}),
    ]
    for path, method, status, parts in cases:
        case = schema[path][method].Case(**parts)
        # The 422 is for a schema-valid request, so the acceptance check is left out here too.
        response = case.call_and_validate(
            base_url=url, headers=key, timeout=30, excluded_checks=[positive_data_acceptance]
        )
        assert response.status_code == status, (path, parts.get("body"), response.text)
