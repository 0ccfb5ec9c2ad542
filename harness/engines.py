"""Fake engines, named as such, for tests and benchmarks about the plumbing, not the models.

Selected with e.g. `LLM_ENGINE=harness.engines:CrashingGenerator`.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.settings import Settings
from worker.engines import (
    ENGINE_SAMPLING,
    WARM_UP_PROMPTS,
    Audio,
    Message,
    Reply,
    Sampling,
    Transcript,
)


class InstantTranscriber:
    """Hears a fixed sentence at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> InstantTranscriber:
        return cls()

    def transcribe(self, audio: np.ndarray, **_options: Any) -> Transcript:
        return Transcript(text="instant transcript", language="en", seconds=0.0)


class EchoGenerator:
    """Answers with the last message, at once, word by word; one token per word."""

    context_tokens = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> EchoGenerator:
        return cls()

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        text = f"echo: {messages[-1]['content']}"
        for word in text.split(" "):
            if on_delta is not None:
                on_delta(word + " ")
        return Reply(text, self.count_tokens(messages), len(text.split()), "stop", 0.0)


class ToneSynthesizer:
    """Says everything as a short tone, at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ToneSynthesizer:
        return cls()

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        t = np.arange(int(8_000 / speed)) / 16_000
        return Audio((3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 16_000, 0.0)


class CrashingGenerator(EchoGenerator):
    """Kills its own process on every prompt but the warm-up's, like a segfault in native code."""

    def generate(self, messages: list[Message], **options: Any) -> Reply:
        if messages[-1]["content"] not in WARM_UP_PROMPTS:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(messages, **options)


class CrashOnceSynthesizer(ToneSynthesizer):
    """Kills its process the first time it speaks a job's reply, then works."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    @classmethod
    def from_settings(cls, settings: Settings) -> CrashOnceSynthesizer:
        return cls(settings.data_dir / "crashed-once")

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        if text != "Ready." and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().synthesize(text, voice=voice, speed=speed)


class CountingGenerator(EchoGenerator):
    """Echoes, and appends a line to a file for every generation (to count them)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    @classmethod
    def from_settings(cls, settings: Settings) -> CountingGenerator:
        return cls(settings.data_dir / "generations.log")

    def generate(self, messages: list[Message], **options: Any) -> Reply:
        with self.log.open("a") as handle:
            handle.write(messages[-1]["content"] + "\n")
        return super().generate(messages, **options)


class PacedGenerator(EchoGenerator):
    """Echoes word by word, a pause before each word of prompts that start with "slow" (so a
    test can signal a worker mid-generation), and logs each generation's start and end with its
    process id (to count the generations a fault interrupted and those run again)."""

    pause_seconds = 0.25

    def __init__(self, log: Path) -> None:
        self.log = log

    @classmethod
    def from_settings(cls, settings: Settings) -> PacedGenerator:
        return cls(settings.data_dir / "paced-generations.log")

    def _note(self, what: str, prompt: str) -> None:
        with self.log.open("a") as handle:
            handle.write(f"{what}\t{os.getpid()}\t{prompt}\n")

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        prompt = messages[-1]["content"]
        if prompt in WARM_UP_PROMPTS:
            return super().generate(messages, max_tokens=max_tokens, temperature=temperature)
        self._note("start", prompt)
        pause = self.pause_seconds if prompt.startswith("slow") else 0.0

        def paced(piece: str) -> None:
            time.sleep(pause)
            if on_delta is not None:
                on_delta(piece)

        reply = super().generate(
            messages, max_tokens=max_tokens, temperature=temperature, on_delta=paced
        )
        self._note("end", prompt)
        return reply


class VaryingToneSynthesizer(ToneSynthesizer):
    """Says everything as a tone of random length (0.1-1.5 s): two attempts at one reply make
    WAVs of different lengths, so a served file that is not the row's shows."""

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        frames = int(random.SystemRandom().uniform(0.1, 1.5) * 16_000)
        t = np.arange(frames) / 16_000
        return Audio((3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 16_000, 0.0)


# Engines that do nothing, for the benchmarks: what they time is the service.
NULL_ENGINES = {
    "STT_ENGINE": "harness.engines:InstantTranscriber",
    "LLM_ENGINE": "harness.engines:NullGenerator",
    "TTS_ENGINE": "harness.engines:NullSynthesizer",
}
# Limits no benchmark reaches, yet still checked on every submit: the rate limiter counts, the
# queue's depth and the caller's unfinished jobs are read, so their cost is in every figure (at
# the defaults, a load generator would time 429s after its first 600 requests).
UNREACHED_LIMITS = {
    "RATE_LIMIT_PER_MINUTE": "1000000000",
    "MAX_UNFINISHED_JOBS": "1000000000",
    "MAX_QUEUE_DEPTH": "1000000000",
}


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
        sampling: Sampling = ENGINE_SAMPLING,
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
