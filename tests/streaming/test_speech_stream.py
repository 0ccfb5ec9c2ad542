"""A spoken reply streamed while the worker makes it, sentence by sentence, on real processes.

The engines are the plumbing fakes of harness/engines.py (named as such): the paced echo speaks
the prompt back a word every 0.25 s, so the first sentence is spoken while the rest is still
being generated, and the tone synthesizer says each sentence as a short tone.
"""

from __future__ import annotations

import http.client
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from harness.stack import FAST_ENGINES, Stack

pytestmark = pytest.mark.e2e

PROMPT = "slow One. Two. Three. Four."  # "slow": the paced echo pauses before each word


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engines = {**FAST_ENGINES, "LLM_ENGINE": "harness.engines:PacedGenerator"}
    with Stack(tmp_path_factory.mktemp("speech-stream"), **engines).serving() as stack:
        yield stack


def _open(stack: Stack, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    url = urlsplit(stack.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.request("GET", path, headers=stack.auth)
    return connection, connection.getresponse()


def _stored_samples(stack: Stack, job_id: str) -> np.ndarray:
    wav = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio", timeout=10)
    assert wav.status_code == 200 and wav.headers["Content-Type"] == "audio/wav"
    samples, _rate = sf.read(io.BytesIO(wav.content), dtype="int16")
    return np.asarray(samples)


def test_the_first_sentence_plays_while_the_rest_is_generated(stack: Stack) -> None:
    job_id = stack.submit(json={"text": PROMPT, "reply": "voice"})
    connection, response = _open(stack, f"/v1/jobs/{job_id}/audio")
    try:
        assert response.status == 200 and response.getheader("Content-Type") == "audio/wav"
        header = response.read(44)
        first = response.read1(65536)
        # The first sentence came while the model still had words of the reply to give.
        job = stack.job(job_id)
        assert (job["status"], job["stage"]) == ("running", "generating")
        rest = response.read()
    finally:
        connection.close()
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", header, 40)[0] == 0xFFFFFFFF  # a stream: length unknown
    (rate,) = struct.unpack_from("<I", header, 24)
    streamed = np.frombuffer(first + rest, dtype="<i2")
    stored = _stored_samples(stack, job_id)
    assert stack.job(job_id)["status"] == "succeeded"
    # What was heard is exactly the reply stored: every sentence once, in order.
    assert rate == 16_000 and np.array_equal(streamed, stored)
    assert len(stored) == 4 * 8_000  # four sentences, half a second of tone each


def test_raw_pcm_streams_the_same_samples_and_a_finished_reply_is_served_whole(
    stack: Stack,
) -> None:
    job_id = stack.submit(json={"text": PROMPT, "reply": "voice"})
    connection, response = _open(stack, f"/v1/jobs/{job_id}/audio?format=pcm")
    try:
        assert response.status == 200 and response.getheader("Content-Type") == "audio/pcm"
        streamed = np.frombuffer(response.read(), dtype="<i2")
    finally:
        connection.close()
    stored = _stored_samples(stack, job_id)
    assert np.array_equal(streamed, stored)
    after = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio?format=pcm", timeout=10)
    assert after.headers["X-Sample-Rate"] == "16000"
    assert np.array_equal(np.frombuffer(after.content, dtype="<i2"), stored)


def test_sentence_files_are_gone_once_the_reply_is_stored(stack: Stack) -> None:
    job_id = stack.submit(json={"text": "One. Two.", "reply": "voice"})
    assert stack.wait(job_id)["status"] == "succeeded"
    results = Path(stack.data_dir) / "results"
    assert [path.name for path in results.glob(f"{job_id}-*")] == [f"{job_id}-1.wav"]


def test_a_text_reply_has_no_stream(stack: Stack) -> None:
    job_id = stack.submit(json={"text": PROMPT, "reply": "text"})
    early = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio", timeout=10)
    assert early.status_code == 409 and early.json()["code"] == "job_not_finished"
    bad = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio?format=mp3", timeout=10)
    assert bad.status_code == 422 and bad.json()["field"] == "format"
    stack.wait(job_id)


def test_openai_speech_streams_wav_and_24_khz_pcm(stack: Stack) -> None:
    asked = {"model": "tts-1", "input": "One. Two. Three.", "voice": "alloy"}
    wav = stack.http.post(
        f"{stack.url}/v1/audio/speech", json={**asked, "response_format": "wav"}, timeout=60
    )
    assert wav.status_code == 200 and wav.headers["Content-Type"] == "audio/wav"
    job_id = wav.headers["X-Job-Id"]
    assert struct.unpack_from("<I", wav.content, 40)[0] == 0xFFFFFFFF  # sent as a stream
    stored = _stored_samples(stack, job_id)
    assert len(stored) == 3 * 8_000  # three sentences, each spoken when it was reached
    assert np.array_equal(np.frombuffer(wav.content[44:], dtype="<i2"), stored)

    pcm = stack.http.post(
        f"{stack.url}/v1/audio/speech", json={**asked, "response_format": "pcm"}, timeout=60
    )
    assert pcm.status_code == 200 and pcm.headers["Content-Type"] == "audio/pcm"
    samples = np.frombuffer(pcm.content, dtype="<i2")
    assert abs(len(samples) - len(stored) * 24_000 // 16_000) <= 16  # OpenAI's pcm: 24 kHz
