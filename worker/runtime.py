"""The worker process's loaded engines: built once per process, lazily, behind a lock, never in
a process that forks afterwards: CUDA is not fork-safe (celery#3402)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import numpy as np

from models.errors import NoSpeech
from models.settings import Settings
from worker.engines import (
    WARM_UP_PROMPTS,
    WARM_UP_TOKENS,
    build_generator,
    build_synthesizer,
    build_transcriber,
)
from worker.pipeline import Pipeline

_LOGGER = logging.getLogger(__name__)

_PIPELINE: Pipeline | None = None
_PIPELINE_LOCK = threading.Lock()
# What the engines' loading came to, for the readiness key (worker/lease_keeper.py).
_STATUS: dict[str, Any] = {"models_loaded": False}


def get_pipeline(settings: Settings | None = None) -> Pipeline:
    """This process's pipeline, its engines loaded and warmed on first use."""
    global _PIPELINE
    with _PIPELINE_LOCK:
        if _PIPELINE is None:
            _PIPELINE = _load(settings or Settings.from_env())
        return _PIPELINE


def _load(settings: Settings) -> Pipeline:
    started = time.perf_counter()
    pipeline = Pipeline(
        settings,
        transcriber=build_transcriber(settings),
        generator=build_generator(settings),
        synthesizer=build_synthesizer(settings),
    )
    loaded = time.perf_counter()
    warm_up(pipeline)
    engines = {"stt": settings.stt_engine, "llm": settings.llm_engine, "tts": settings.tts_engine}
    # The devices as set: an engine set to "cuda" refuses to load where CUDA is missing, so a
    # loaded engine with "cuda" here runs on the GPU (docs/jetson-orin.md).
    devices = {
        "stt": settings.whisper_device,
        "llm": settings.llm_device,
        "tts": settings.tts_device,
    }
    _LOGGER.info(
        "engines ready stt=%s llm=%s tts=%s devices=%s load_s=%.2f warmup_s=%.2f",
        *engines.values(),
        ",".join(f"{stage}:{device}" for stage, device in devices.items()),
        loaded - started,
        time.perf_counter() - loaded,
    )
    _STATUS.update(
        models_loaded=True,
        **engines,
        llm_model=str(getattr(pipeline.generator, "model", "")),
        devices=devices,
        load_s=round(loaded - started, 2),
    )
    return pipeline


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


def load_status() -> dict[str, Any]:
    """Whether the engines are loaded and which, or why they failed, for `/readyz`."""
    return dict(_STATUS)


def record_load_error(error: Exception) -> None:
    """Notes why the engines failed to load, for `/readyz`."""
    _STATUS.update(models_loaded=False, error=str(error) or type(error).__name__)


def warm_up(pipeline: Pipeline) -> None:
    """Runs each engine once so the first job does not pay for lazy initialisation."""
    settings = pipeline.settings
    audio = pipeline.synthesizer.synthesize("Ready.", voice=settings.tts_voice)
    with contextlib.suppress(NoSpeech):  # one second of silence: exactly the expected answer
        pipeline.transcriber.transcribe(np.zeros(16_000, dtype=np.float32))
    for prompt in WARM_UP_PROMPTS:
        messages = pipeline.messages_for(prompt, {})
        pipeline.generator.generate(messages, max_tokens=WARM_UP_TOKENS, temperature=0.0)
    _LOGGER.debug("warm-up done audio_s=%.2f", audio.duration)
