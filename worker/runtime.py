"""The worker process's loaded engines: built once per process, lazily, behind a lock.

Models are loaded in the pool's child process (Celery's `worker_process_init`), never at import
time and never in a process that forks afterwards: CUDA is not fork-safe (celery#3402).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from models import heartbeat
from models import jobs as job_rows
from models.db import make_engine, make_session_factory
from models.errors import NoSpeech
from models.events import JobEvents
from models.settings import Settings
from worker.engines import build_generator, build_synthesizer, build_transcriber
from worker.pipeline import Pipeline

_LOGGER = logging.getLogger(__name__)

_PIPELINE: Pipeline | None = None
_PIPELINE_LOCK = threading.Lock()
_STATUS: dict[str, Any] = {"models_loaded": False}
# The job this process runs now, if any, and the lease holder's name: the heartbeat renews it.
_LEASE: dict[str, str | None] = {"job_id": None, "owner": None}


def worker_id() -> str:
    """Names this worker process in readiness reports."""
    return f"{socket.gethostname()}:{os.getpid()}"


def get_pipeline(settings: Settings | None = None) -> Pipeline:
    """Returns this process's pipeline, loading and warming the engines on first use."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        if _PIPELINE is None:
            settings = settings or Settings.from_env()
            started = time.perf_counter()
            pipeline = Pipeline(
                settings,
                transcriber=build_transcriber(settings),
                generator=build_generator(settings),
                synthesizer=build_synthesizer(settings),
            )
            loaded = time.perf_counter()
            warm_up(pipeline)
            _LOGGER.info(
                "engines ready stt=%s llm=%s tts=%s load_s=%.2f warmup_s=%.2f",
                settings.stt_engine,
                settings.llm_engine,
                settings.tts_engine,
                loaded - started,
                time.perf_counter() - loaded,
            )
            _STATUS.update(
                models_loaded=True,
                stt=settings.stt_engine,
                llm=settings.llm_engine,
                tts=settings.tts_engine,
                load_s=round(loaded - started, 2),
            )
            _PIPELINE = pipeline
        return _PIPELINE


def close_engines() -> None:
    """Releases engines holding resources outside Python (MLC's GPU thread, HTTP pools)."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        if _PIPELINE is not None:
            for engine in (_PIPELINE.transcriber, _PIPELINE.generator, _PIPELINE.synthesizer):
                if (close := getattr(engine, "close", None)) is not None:
                    with contextlib.suppress(Exception):
                        close()
            _PIPELINE = None


_EVENTS: JobEvents | None = None


def events(settings: Settings) -> JobEvents:
    """This process's writer of job event streams, made on first use (after any fork)."""
    global _EVENTS
    if _EVENTS is None:
        client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        _EVENTS = JobEvents(client, ttl_seconds=settings.events_ttl_seconds)
    return _EVENTS


def hold_lease(job_id: str | None, owner: str) -> None:
    """Tells the heartbeat which job's lease to keep renewing (None: no job)."""
    _LEASE.update(job_id=job_id, owner=owner)


def record_load_error(error: Exception) -> None:
    """Notes why the engines failed to load, for `/readyz`."""
    _STATUS.update(models_loaded=False, error=str(error) or type(error).__name__)


def warm_up(pipeline: Pipeline) -> None:
    """Runs each engine once so the first job does not pay for lazy initialisation."""
    settings = pipeline.settings
    audio = pipeline.synthesizer.synthesize("Ready.", voice=settings.tts_voice)
    with contextlib.suppress(NoSpeech):  # one second of silence: exactly the expected answer
        pipeline.transcriber.transcribe(np.zeros(16_000, dtype=np.float32))
    pipeline.generator.generate(pipeline.messages_for("Hi", {}), max_tokens=1, temperature=0.0)
    _LOGGER.debug("warm-up done audio_s=%.2f", audio.duration)


class Heartbeat(threading.Thread):
    """Keeps this process's readiness key alive in Redis while the process lives."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="voicechat-heartbeat", daemon=True)
        self.settings = settings
        self.client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.stopped = threading.Event()
        self.worker_id = worker_id()
        self.sessions = make_session_factory(make_engine(settings.database_url))

    def beat(self) -> None:
        """Publishes this process's status once."""
        info = {"worker_id": self.worker_id, "pid": os.getpid(), **_STATUS}
        interval = self.settings.worker_heartbeat_seconds
        heartbeat.publish(self.client, self.worker_id, info, ttl_seconds=interval * 3)

    def renew(self) -> None:
        """Extends the lease of the job this process is running, if any."""
        job_id, owner = _LEASE["job_id"], _LEASE["owner"]
        if job_id is None or owner is None:
            return
        with self.sessions() as session:
            if not job_rows.renew_lease(session, job_id, owner, self.settings.lease_seconds):
                _LOGGER.warning("lease lost job_id=%s owner=%s", job_id, owner)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.renew()
            except SQLAlchemyError as error:
                _LOGGER.warning("lease renewal failed error=%s", type(error).__name__)
            try:
                self.beat()
            except RedisError as error:
                _LOGGER.warning("heartbeat failed error=%s", type(error).__name__)
            self.stopped.wait(self.settings.worker_heartbeat_seconds)

    def stop(self) -> None:
        """Stops beating and withdraws the key."""
        self.stopped.set()
        with contextlib.suppress(RedisError):
            heartbeat.withdraw(self.client, self.worker_id)
