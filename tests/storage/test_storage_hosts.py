"""Storage every host reaches: an API and a worker with different data folders (as on two hosts),
the same database and broker, and `STORAGE_BACKEND=database`; the real engines answer a spoken
question with speech."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from harness.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def apart(tmp_path: Path, database_url: str) -> Iterator[tuple[Stack, Path, Path]]:
    api_root, worker_root = tmp_path / "api-host", tmp_path / "worker-host"
    stack = Stack(tmp_path, DATABASE_URL=database_url, STORAGE_BACKEND="database")
    try:
        stack.start_redis()
        stack.start_api(DATA_DIR=str(api_root))
        stack.start_worker(1, DATA_DIR=str(worker_root))
        yield stack, api_root, worker_root
    finally:
        stack.close()


def test_a_worker_on_its_own_root_answers_voice_with_voice(
    apart: tuple[Stack, Path, Path], question_wav: bytes
) -> None:
    stack, api_root, worker_root = apart
    wav = {"data": question_wav, "headers": {"Content-Type": "audio/wav"}}
    job_ids = [stack.submit(**wav, params={"reply": "voice"}) for _ in range(2)]
    for job_id in job_ids:
        job = stack.wait(job_id)
        assert job["status"] == "succeeded", job
        assert "capital" in job["result"]["transcript"].lower()
        reply = stack.http.get(stack.url + job["result"]["audio_url"], timeout=30)
        assert reply.status_code == 200 and reply.headers["Content-Type"] == "audio/wav"
        info = sf.info(io.BytesIO(reply.content))
        assert (info.channels, info.subtype) == (1, "PCM_16")
        assert abs(info.duration - job["result"]["audio_seconds"]) < 0.002
    # Neither host kept a file of its own: the upload and the reply went through the database.
    for root in (api_root, worker_root):
        assert not (root / "uploads").exists() and not (root / "results").exists(), root
