"""Pipeline plumbing with fake engines (named as such): stage order, checkpoints, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from models.errors import EmptyReply
from models.job import ReplyFormat, Stage
from models.settings import Settings
from tests.conftest import tone
from worker.engines import Audio, Message, Reply, Transcript
from worker.pipeline import (
    DEFAULT_SYSTEM_PROMPT,
    JobInput,
    Pipeline,
    speakable,
    trim_to_sentence,
)


class FakeTranscriber:
    def __init__(self) -> None:
        self.heard: list[int] = []

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(len(audio))
        return Transcript(text="what is two plus two", language="en", seconds=0.1)


class FakeGenerator:
    def __init__(self, answer: str = "**Four**, of course.") -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float) -> Reply:
        self.calls.append(
            {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        )
        return Reply(
            self.answer, prompt_tokens=5, completion_tokens=3, finish_reason="stop", seconds=0.2
        )


class FakeSynthesizer:
    def __init__(self) -> None:
        self.spoken: list[tuple[str, str]] = []

    def synthesize(self, text: str, *, voice: str) -> Audio:
        self.spoken.append((text, voice))
        return Audio(samples=np.ones(2205, np.int16), sample_rate=22_050, seconds=0.3)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Stage, dict[str, Any]]] = []

    def enter(self, stage: Stage, **checkpoint: Any) -> None:
        self.events.append((stage, checkpoint))


def _pipeline(settings: Settings, generator: FakeGenerator | None = None):  # type: ignore[no-untyped-def]
    return Pipeline(settings, FakeTranscriber(), generator or FakeGenerator(), FakeSynthesizer())


def test_voice_to_voice_runs_every_stage_in_order(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "q.wav"
    sf.write(path, tone(1.0, 44_100, 2), 44_100)
    pipeline = _pipeline(settings)
    progress = Recorder()
    outcome = pipeline.run(
        JobInput(job_id="j", reply=ReplyFormat.VOICE, audio_path=path, options={"voice": "v2"}),
        progress,
    )
    assert [stage for stage, _ in progress.events] == [
        Stage.TRANSCRIBING,
        Stage.GENERATING,
        Stage.SYNTHESIZING,
    ]
    assert progress.events[1][1] == {"transcript": "what is two plus two", "transcribe_s": 0.1}
    assert progress.events[2][1] == {"reply_text": "**Four**, of course.", "generate_s": 0.2}
    assert pipeline.transcriber.heard == [16_000]  # resampled to 16 kHz mono
    assert pipeline.synthesizer.spoken == [("Four , of course.", "v2")]
    assert outcome.audio is not None and outcome.audio.duration == pytest.approx(0.1)


def test_text_to_text_skips_speech_and_applies_defaults(settings: Settings) -> None:
    generator = FakeGenerator()
    pipeline = _pipeline(settings, generator)
    progress = Recorder()
    outcome = pipeline.run(JobInput(job_id="j", reply=ReplyFormat.TEXT, text="hello"), progress)
    assert [stage for stage, _ in progress.events] == [Stage.GENERATING]
    assert outcome.transcript is None and outcome.audio is None
    call = generator.calls[0]
    assert call["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert (call["max_tokens"], call["temperature"]) == (
        settings.default_max_tokens,
        settings.default_temperature,
    )


def test_options_override_system_prompt_and_sampling(settings: Settings) -> None:
    generator = FakeGenerator()
    options = {"system": "", "max_tokens": 7, "temperature": 0.0}
    _pipeline(settings, generator).run(
        JobInput(job_id="j", reply=ReplyFormat.TEXT, text="hi", options=options), Recorder()
    )
    call = generator.calls[0]
    assert call["messages"] == [{"role": "user", "content": "hi"}]
    assert (call["max_tokens"], call["temperature"]) == (7, 0.0)


def test_an_empty_reply_fails_instead_of_speaking_silence(settings: Settings) -> None:
    with pytest.raises(EmptyReply):
        _pipeline(settings, FakeGenerator(answer="")).run(
            JobInput(job_id="j", reply=ReplyFormat.VOICE, text="hi"), Recorder()
        )


def test_a_reply_cut_by_max_tokens_ends_at_its_last_sentence(settings: Settings) -> None:
    class CutGenerator(FakeGenerator):
        def generate(
            self, messages: list[Message], *, max_tokens: int, temperature: float
        ) -> Reply:
            return Reply("Paris is big. It has many", 5, 8, finish_reason="length", seconds=0.1)

    outcome = _pipeline(settings, CutGenerator()).run(
        JobInput(job_id="j", reply=ReplyFormat.TEXT, text="hi"), Recorder()
    )
    assert outcome.reply.text == "Paris is big."


@pytest.mark.parametrize(
    ("text", "trimmed"),
    [
        ("One. Two! Three? Fou", "One. Two! Three?"),
        ('He said "stop." Then we', 'He said "stop."'),
        ("Version 3.5 is out and", "Version 3.5 is out and"),
        ("no sentence end at all", "no sentence end at all"),
    ],
)
def test_trim_to_sentence(text: str, trimmed: str) -> None:
    assert trim_to_sentence(text) == trimmed


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("# Paris\n\n*The* capital is **Paris**.", "Paris The capital is Paris ."),
        ("See [the map](https://example.com) now", "See the map now"),
        ("plain words", "plain words"),
    ],
)
def test_speakable_strips_markup(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


def test_a_redelivered_job_resumes_after_its_checkpoints(settings: Settings) -> None:
    generator = FakeGenerator()
    pipeline = _pipeline(settings, generator)
    progress = Recorder()
    outcome = pipeline.run(
        JobInput(
            job_id="j",
            reply=ReplyFormat.VOICE,
            audio_path=Path("/nonexistent.wav"),  # never read: the transcript is checkpointed
            transcript="what is two plus two",
            reply_text="Four.",
        ),
        progress,
    )
    assert [stage for stage, _ in progress.events] == [Stage.SYNTHESIZING]
    assert pipeline.transcriber.heard == [] and generator.calls == []
    assert (outcome.transcript, outcome.reply, outcome.reply_text) == (None, None, "Four.")
    assert pipeline.synthesizer.spoken == [("Four.", settings.tts_voice)]


def test_a_checkpointed_transcript_skips_only_transcription(settings: Settings) -> None:
    generator = FakeGenerator(answer="Four.")
    pipeline = _pipeline(settings, generator)
    outcome = pipeline.run(
        JobInput(
            job_id="j",
            reply=ReplyFormat.TEXT,
            audio_path=Path("/nonexistent.wav"),
            transcript="what is two plus two",
        ),
        Recorder(),
    )
    assert generator.calls[0]["messages"][-1]["content"] == "what is two plus two"
    assert outcome.transcript is None and outcome.reply_text == "Four."
