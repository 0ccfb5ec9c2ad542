"""The whole service, started the way the README does, over HTTP, with the real models.

The service (gunicorn, a Celery worker process, an embedded Redis, SQLite) runs faster-whisper,
llama.cpp and Piper on the packaged models: the shipped default model (LLM_PRESET=quality) for
one test of each case, the fast one for the rest.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from models.presets import PRESETS
from models.settings import Settings
from tests.conftest import QUESTION, ROOT, Service, running_service, tone, wav_bytes
from worker.engines.model_files import preset_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def transcriber(engine_settings: Settings) -> Any:
    from worker.engines.faster_whisper import FasterWhisperTranscriber

    return FasterWhisperTranscriber.from_settings(engine_settings)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on its shipped defaults, the quality model included."""
    data_dir = tmp_path_factory.mktemp("shipped")
    # Linked from the repository's data folder, where scripts/bootstrap.sh assembles it once:
    # no 1.1 GB copy per test run.
    model = preset_file(PRESETS["quality"], ROOT / "var" / "models")
    (data_dir / "models").mkdir()
    for path in (model, Path(f"{model}.sha256")):
        (data_dir / "models" / path.name).symlink_to(path)
    with running_service(data_dir, LLM_PRESET="quality") as running:
        yield running


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _assert_audible(samples: np.ndarray, rate: int, info: Any, job: dict[str, Any]) -> None:
    assert info.subtype == "PCM_16" and info.channels == 1
    assert len(samples) / rate == pytest.approx(job["result"]["audio_seconds"], abs=0.01)
    assert len(samples) / rate > 0.3
    assert float(np.sqrt(np.mean(samples**2))) > 0.01  # not silence


def test_ready_reports_a_worker_with_models_loaded(shipped: Service) -> None:
    service = shipped
    ready = service.http.get(f"{service.url}/readyz", timeout=10)
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    assert checks["workers"]["count"] == 1
    (worker,) = checks["workers"]["details"]
    # Each stage's device as set (docs/jetson-orin.md reads "cuda" here on an Orin).
    assert set(worker["devices"]) == {"stt", "llm", "tts"}
    assert worker["llm_model"] == "Qwen2.5-Coder-1.5B-Instruct"
    models = service.http.get(f"{service.url}/v1/models", timeout=10).json()["data"]
    assert models[0]["id"] == "Qwen2.5-Coder-1.5B-Instruct"
    assert service.http.get(f"{service.url}/healthz", timeout=10).json() == {"status": "ok"}


def test_text_to_text(shipped: Service) -> None:
    service = shipped
    submitted = service.submit(json={"text": QUESTION, "temperature": 0, "max_tokens": 40})
    assert submitted["status"] == "queued"
    assert submitted["input"] == {"kind": "text", "text": QUESTION}
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert "paris" in _words(job["result"]["text"])
    assert job["result"]["transcript"] is None and job["result"]["audio_url"] is None
    assert job["timings"]["generate_s"] > 0 and job["timings"]["transcribe_s"] is None
    assert job["timings"]["total_s"] >= job["timings"]["generate_s"]
    assert job["attempts"] == 1
    audio = service.http.get(f"{service.url}/v1/jobs/{job['id']}/audio", timeout=10)
    assert audio.status_code == 404 and audio.json()["code"] == "audio_not_found"


def test_voice_to_text(shipped: Service, question_wav: bytes) -> None:
    service = shipped
    submitted = service.submit(
        data=question_wav,
        headers={"Content-Type": "audio/wav"},
        params={"reply": "text", "max_tokens": "40"},
    )
    assert submitted["input"]["kind"] == "audio"
    assert submitted["input"]["audio_seconds"] > 1
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert {"capital", "france"} <= _words(job["result"]["transcript"])
    assert job["result"]["text"].strip()
    assert job["timings"]["transcribe_s"] > 0


def test_voice_in_another_format_is_normalised(service: Service, question_wav: bytes) -> None:
    samples, rate = sf.read(io.BytesIO(question_wav), dtype="float32")
    stereo_48k = np.repeat(soxr.resample(samples, rate, 48_000)[:, None], 2, axis=1)
    upload = wav_bytes(stereo_48k, 48_000, subtype="FLOAT", fmt="WAVEX")
    job = service.wait(
        service.submit(files={"audio": ("../../etc/passwd", upload, "application/octet-stream")})[
            "id"
        ]
    )
    assert job["status"] == "succeeded", job
    assert {"capital", "france"} <= _words(job["result"]["transcript"])


def test_text_to_voice(shipped: Service) -> None:
    service = shipped
    submitted = service.submit(
        data={"text": QUESTION, "reply": "voice", "temperature": "0", "max_tokens": "40"}
    )
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["audio_url"] == f"/v1/jobs/{job['id']}/audio"
    assert job["timings"]["synthesize_s"] > 0
    audio = service.http.get(f"{service.url}{job['result']['audio_url']}", timeout=10)
    assert audio.headers["Cache-Control"] == "max-age=3600, private"  # a shared cache keeps none
    samples, rate, info = service.audio(job)
    assert rate == 22_050
    _assert_audible(samples, rate, info, job)


def test_voice_to_voice(shipped: Service, question_wav: bytes, transcriber: Any) -> None:
    service = shipped
    submitted = service.submit(
        files={"audio": ("question.wav", question_wav, "audio/wav")},
        data={"reply": "voice", "max_tokens": "40", "temperature": "0"},
    )
    # A voice job queued behind this one has not started: its audio streams once it speaks.
    behind = service.submit(json={"text": "Say hello.", "reply": "voice", "max_tokens": 20})
    early = service.http.get(f"{service.url}/v1/jobs/{behind['id']}/audio", timeout=240)
    assert early.status_code == 200 and early.headers["Content-Type"] == "audio/wav"

    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert {"capital", "france"} <= _words(job["result"]["transcript"])
    samples, rate, info = service.audio(job)
    _assert_audible(samples, rate, info, job)
    heard = transcriber.transcribe(soxr.resample(samples, rate, 16_000).astype(np.float32))
    said, understood = _words(job["result"]["text"]), _words(heard.text)
    assert len(said & understood) >= max(1, len(said) // 2), (job["result"]["text"], heard.text)
    finished = service.wait(behind["id"])
    assert finished["status"] == "succeeded"
    stored, _rate, _info = service.audio(finished)
    streamed = np.frombuffer(early.content[44:], dtype="<i2").astype(np.float32) / 32768
    assert np.allclose(streamed, stored.reshape(-1), atol=1e-4)  # heard as stored


def test_silence_fails_with_no_speech(service: Service) -> None:
    quiet = np.random.default_rng(0).normal(0, 0.001, (32_000, 1)).astype(np.float32)
    job = service.wait(
        service.submit(data=wav_bytes(quiet, 16_000), headers={"Content-Type": "audio/wav"})["id"]
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_speech"
    assert job["result"] is None


def test_a_tone_is_not_speech_either(service: Service) -> None:
    job = service.wait(
        service.submit(data=wav_bytes(tone(2.0), 16_000), headers={"Content-Type": "audio/x-wav"})[
            "id"
        ]
    )
    assert (job["status"], job["error"]["code"]) == ("failed", "no_speech")


def test_listing_pages_newest_first(service: Service) -> None:
    made = [
        service.submit(json={"text": f"Count to {n}.", "max_tokens": 5})["id"] for n in range(3)
    ]
    first = service.http.get(f"{service.url}/v1/jobs", params={"limit": 2}, timeout=10).json()
    assert [job["id"] for job in first["data"]] == made[::-1][:2]
    second = service.http.get(
        f"{service.url}/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, timeout=10
    ).json()
    assert second["data"][0]["id"] == made[0]
    for job_id in made:
        service.wait(job_id)
    succeeded = service.http.get(
        f"{service.url}/v1/jobs", params={"status": "succeeded", "limit": 100}, timeout=10
    ).json()["data"]
    assert set(made) <= {job["id"] for job in succeeded}
    assert all(job["status"] == "succeeded" for job in succeeded)


def test_openapi_document_is_served(service: Service) -> None:
    document = service.http.get(f"{service.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/audio", "/readyz"} <= set(
        document["paths"]
    )
