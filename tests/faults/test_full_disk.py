"""A full disk on a real filesystem (a tmpfs of a few KB mounted for the test): a 507 problem
for an upload, a job that cannot store its reply failed with `insufficient_storage`, and no
half-written file left behind."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.stack import FAST_ENGINES
from models import storage
from models.errors import InsufficientStorage
from tests.conftest import running_service, tone, wav_bytes


@pytest.fixture
def tiny_disk() -> Iterator[Callable[[Path, int], Path]]:
    """Mounts a tmpfs of `size` bytes at a folder (needs root); unmounts them all after."""
    mounted: list[Path] = []

    def mount(folder: Path, size: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a full disk is simulated by mounting a tiny tmpfs: {done.stderr}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=True)


def test_a_write_that_finds_the_disk_full_leaves_nothing(
    tiny_disk: Callable[[Path, int], Path], tmp_path: Path
) -> None:
    store = storage.LocalStore(tiny_disk(tmp_path / "results", 16 * 1024))
    with pytest.raises(InsufficientStorage):
        store.write("abc-1.wav", b"x" * 256 * 1024)
    assert list(store.root.iterdir()) == []  # no temporary file, no final name
    assert store.write("abc-2.wav", b"small") == "abc-2.wav"  # room enough for a small one


@pytest.mark.e2e
def test_a_full_disk_is_a_507_for_uploads_and_fails_a_voice_reply(
    tiny_disk: Callable[[Path, int], Path], tmp_path: Path
) -> None:
    tiny_disk(tmp_path / "uploads", 16 * 1024)
    tiny_disk(tmp_path / "results", 8 * 1024)  # smaller than one spoken sentence
    with running_service(tmp_path, **FAST_ENGINES) as service:
        wav = wav_bytes(tone(2.0), 16_000)  # 64 KB
        answer = service.http.post(
            f"{service.url}/v1/jobs", data=wav, headers={"Content-Type": "audio/wav"}, timeout=30
        )
        assert answer.status_code == 507, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["code"] == "insufficient_storage"
        assert list((tmp_path / "uploads").iterdir()) == []
        listed = service.http.get(f"{service.url}/v1/jobs", timeout=10).json()["data"]
        assert listed == []  # no row for the refused upload

        job = service.wait(service.submit(json={"text": "hello there", "reply": "voice"})["id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "insufficient_storage", job
        assert list((tmp_path / "results").iterdir()) == []
