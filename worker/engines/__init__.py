"""Stage contracts (transcribe, generate, synthesize) and the engine registry chosen by settings:
an engine's module is imported only when chosen, never another stack's libraries."""

from __future__ import annotations

import io
import pkgutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, cast

import numpy as np
import soundfile as sf

from models.errors import EngineUnavailable, NoSpeech
from models.settings import Settings
from models.tables import Message as Message  # re-exported: the chat shape the stages speak

# What the worker's warm-up (worker/runtime.py) asks the language model, a few tokens each:
# llama.cpp then has evaluated prompts and decoded token by token before the first job. A warm-up
# of one token of "Hi" never decoded, and left that to the first job (bench.cases).
WARM_UP_PROMPTS = ("Hi", "Say hello to the world in one short sentence.")
WARM_UP_TOKENS = 8


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn beside the temperature, by OpenAI's names (which llama-cpp-python and
    MLC share); None: the engine's own default."""

    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Sampling:
        """The sampling options a job's options hold (the OpenAI route stores them)."""
        given = {f.name: options[f.name] for f in fields(cls) if options.get(f.name) is not None}
        return cls(**{**given, "stop": tuple(given.get("stop", ()))})

    def given(self) -> dict[str, Any]:
        """The options set, as keyword arguments of a chat completion (`stop` a list)."""
        values = {**asdict(self), "stop": list(self.stop) or None}
        return {name: value for name, value in values.items() if value is not None}


ENGINE_SAMPLING = Sampling()  # every option the engine's own


@dataclass(frozen=True)
class Segment:
    """A stretch of recognised speech with its times in the recording, in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What the recogniser heard; `seconds` is the time it took, `duration` the audio's length."""

    text: str
    language: str | None
    seconds: float
    segments: tuple[Segment, ...] = ()
    duration: float = 0.0


@dataclass(frozen=True)
class Reply:
    """What the language model answered, with token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    seconds: float


@dataclass(frozen=True)
class Audio:
    """Synthesised speech as 16-bit mono samples."""

    samples: np.ndarray
    sample_rate: int
    seconds: float

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return len(self.samples) / self.sample_rate

    def to_wav(self) -> bytes:
        """Encodes the audio as a 16-bit PCM mono WAV."""
        buffer = io.BytesIO()
        sf.write(buffer, self.samples, self.sample_rate, subtype="PCM_16", format="WAV")
        return buffer.getvalue()


# Whisper's own rule for a silent segment (openai/whisper transcribe.py): both a high
# no-speech probability and a low average log-probability.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


def heard(
    segments: Iterable[tuple[float, float, str, float, float]],
    *,
    language: str | None,
    started: float,
    duration: float,
) -> Transcript:
    """Whisper's (start, end, text, no_speech_prob, avg_logprob) segments, silent ones left out."""
    spoken = tuple(
        Segment(start=round(start, 2), end=round(end, 2), text=text.strip())
        for start, end, text, no_speech, logprob in segments
        if text.strip() and not (no_speech > NO_SPEECH_THRESHOLD and logprob < LOGPROB_THRESHOLD)
    )
    if not spoken:
        raise NoSpeech("No speech was found in the recording.")
    return Transcript(
        text=" ".join(segment.text for segment in spoken),
        language=language,
        seconds=round(time.perf_counter() - started, 3),
        segments=spoken,
        duration=round(duration, 3),
    )


class Transcriber(Protocol):
    """Speech to text."""

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        """Transcribes 16 kHz mono float32 (NoSpeech when nothing is said); `language` None is
        the configured default, `prompt` Whisper's initial prompt."""


class Generator(Protocol):
    """Chat messages to a reply."""

    context_tokens: int

    def count_tokens(self, messages: list[Message]) -> int:
        """Returns the prompt tokens the messages take with the model's chat template."""

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        """Answers, streaming text to `on_delta`; ContextLengthExceeded if it cannot fit."""


class Synthesizer(Protocol):
    """Text to speech."""

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        """Speaks `text` with the named voice; `speed` 2.0 is twice as fast."""


# Setting value → "module:factory"; each factory takes the Settings and returns an adapter.
TRANSCRIBERS = {
    "faster-whisper": "worker.engines.faster_whisper:FasterWhisperTranscriber",
    "openai-whisper": "worker.engines.openai_whisper:OpenAIWhisperTranscriber",
}
GENERATORS = {
    "llama-cpp": "worker.engines.llama_cpp:LlamaCppGenerator",
    "openai": "worker.engines.openai_chat:OpenAIChatGenerator",
    "mlc": "worker.engines.openai_chat:MLCChatGenerator",
}
SYNTHESIZERS = {
    "piper": "worker.engines.piper:PiperSynthesizer",
    "coqui": "worker.engines.coqui:CoquiSynthesizer",
}


def _build(setting: str, name: str, registry: dict[str, str], settings: Settings) -> Any:
    # A "package.module:Class" value plugs in an adapter of one's own (the tests' fault engines).
    target = name if ":" in name else registry.get(name)
    if target is None:
        raise EngineUnavailable(
            f"{setting}={name!r} is not a known engine; "
            f"choose one of {', '.join(sorted(registry))}."
        )
    try:
        adapter = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as error:
        raise EngineUnavailable(f"{setting}={name!r} cannot be imported: {error}") from error
    return adapter.from_settings(settings)


def build_transcriber(settings: Settings) -> Transcriber:
    """Loads the speech recogniser named by `STT_ENGINE`."""
    return cast(Transcriber, _build("STT_ENGINE", settings.stt_engine, TRANSCRIBERS, settings))


def build_generator(settings: Settings) -> Generator:
    """Loads the language model named by `LLM_ENGINE`."""
    return cast(Generator, _build("LLM_ENGINE", settings.llm_engine, GENERATORS, settings))


def build_synthesizer(settings: Settings) -> Synthesizer:
    """Loads the speech synthesiser named by `TTS_ENGINE`."""
    return cast(Synthesizer, _build("TTS_ENGINE", settings.tts_engine, SYNTHESIZERS, settings))
