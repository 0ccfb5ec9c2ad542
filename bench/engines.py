"""Engines made for the benchmarks, named as such: they do nothing, so what is timed is the service.

Selected with `STT_ENGINE=bench.engines:NullTranscriber` and the like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from models.settings import Settings
from worker.engines import Audio, Message, Reply, Transcript

NULL_ENGINES = {
    "STT_ENGINE": "bench.engines:NullTranscriber",
    "LLM_ENGINE": "bench.engines:NullGenerator",
    "TTS_ENGINE": "bench.engines:NullSynthesizer",
}
# Limits no benchmark reaches, yet still checked on every submit: the rate limiter counts, the
# queue's depth and the caller's unfinished jobs are read, so their cost is in every figure (at
# the defaults, a load generator would time 429s after its first 600 requests).
UNREACHED_LIMITS = {
    "RATE_LIMIT_PER_MINUTE": "1000000000",
    "MAX_UNFINISHED_JOBS": "1000000000",
    "MAX_QUEUE_DEPTH": "1000000000",
}


class NullTranscriber:
    """Hears one word, at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> NullTranscriber:
        return cls()

    def transcribe(self, audio: np.ndarray, **_options: Any) -> Transcript:
        return Transcript(text="hello", language="en", seconds=0.0)


class NullGenerator:
    """Answers "Yes." at once: one token, no model."""

    context_tokens = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> NullGenerator:
        return cls()

    def count_tokens(self, messages: list[Message]) -> int:
        return len(messages)

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        if on_delta is not None:
            on_delta("Yes.")
        return Reply("Yes.", len(messages), 1, "stop", 0.0)


class NullSynthesizer:
    """Says anything as 10 ms of silence, at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> NullSynthesizer:
        return cls()

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        return Audio(np.zeros(160, dtype=np.int16), 16_000, 0.0)
