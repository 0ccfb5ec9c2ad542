"""Pipeline plumbing with fake engines (named as such): stage order, checkpoints, options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from harness.engines import EchoGenerator
from models.errors import EmptyReply
from models.settings import Settings
from models.tables import Operation, ReplyFormat, Stage
from tests.conftest import tone
from worker.engines import ENGINE_SAMPLING, Audio, Message, Reply, Sampling, Transcript
from worker.pipeline import (
    DEFAULT_SYSTEM_PROMPT,
    JobInput,
    Pipeline,
    speakable,
    trim_to_sentence,
)
from worker.sentences import SentenceCutter, split_sentences


class FakeTranscriber:
    def __init__(self) -> None:
        self.heard: list[int] = []

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        self.heard.append(len(audio))
        self.options = {"language": language, "prompt": prompt}
        return Transcript(text="what is two plus two", language="en", seconds=0.1)


class FakeGenerator(EchoGenerator):
    """Answers a fixed text; counts tokens as the fault tests' echo engine does."""

    def __init__(
        self,
        answer: str = "**Four**, of course.",
        context_tokens: int = 2048,
        finish_reason: str = "stop",
    ) -> None:
        self.answer = answer
        self.finish_reason = finish_reason
        self.context_tokens = context_tokens
        self.calls: list[dict[str, Any]] = []

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        self.calls.append(
            {
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "sampling": sampling,
            }
        )
        # As a real model streams: the pieces joined are the answer.
        pieces = self.answer.split(" ")
        for index, piece in enumerate(pieces):
            if on_delta is not None:
                on_delta(piece if index == len(pieces) - 1 else piece + " ")
        return Reply(
            self.answer,
            prompt_tokens=5,
            completion_tokens=3,
            finish_reason=self.finish_reason,
            seconds=0.2,
        )


class FakeSynthesizer:
    def __init__(self) -> None:
        self.spoken: list[tuple[str, str]] = []
        self.speeds: list[float] = []

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        self.spoken.append((text, voice))
        self.speeds.append(speed)
        return Audio(samples=np.ones(2205, np.int16), sample_rate=22_050, seconds=0.3)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Stage, Transcript | Reply | None]] = []
        self.deltas: list[str] = []
        self.sentences: list[tuple[int, str, int]] = []
        self.timeline: list[str] = []

    def enter(self, stage: Stage, done: Transcript | Reply | None = None) -> None:
        self.events.append((stage, done))
        self.timeline.append(f"stage:{stage.value}")

    def delta(self, text: str) -> None:
        self.deltas.append(text)
        self.timeline.append(f"delta:{text.strip()}")

    def sentence(self, index: int, text: str, audio: Audio) -> None:
        self.sentences.append((index, text, len(audio.samples)))
        self.timeline.append(f"sentence:{index}")


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
    # Each stage starts with the result of the one before it, to checkpoint.
    assert progress.events[0][1] is None
    assert progress.events[1][1] == Transcript(
        text="what is two plus two", language="en", seconds=0.1
    )
    reply = progress.events[2][1]
    assert isinstance(reply, Reply) and reply.text == "**Four**, of course."
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (5, 3, "stop")
    # The model's time, without the sentence spoken while it generated.
    assert 0.0 < reply.seconds <= 0.2
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
    assert call["sampling"] == Sampling() and call["sampling"].given() == {}


def test_options_override_system_prompt_and_sampling(settings: Settings) -> None:
    generator = FakeGenerator()
    options = {"system": "", "max_tokens": 7, "temperature": 0.0}
    _pipeline(settings, generator).run(
        JobInput(job_id="j", reply=ReplyFormat.TEXT, text="hi", options=options), Recorder()
    )
    call = generator.calls[0]
    assert call["messages"] == [{"role": "user", "content": "hi"}]
    assert (call["max_tokens"], call["temperature"]) == (7, 0.0)


def test_openai_sampling_options_reach_the_generator(settings: Settings) -> None:
    generator = FakeGenerator()
    options = {"top_p": 0.5, "stop": ["\n", "5"], "seed": 3, "frequency_penalty": -0.5}
    _pipeline(settings, generator).run(
        JobInput(job_id="j", reply=ReplyFormat.TEXT, text="hi", options=options), Recorder()
    )
    sampling = generator.calls[0]["sampling"]
    assert sampling == Sampling(top_p=0.5, stop=("\n", "5"), seed=3, frequency_penalty=-0.5)
    assert sampling.given() == options  # as a chat completion's keyword arguments


def test_an_empty_reply_fails_instead_of_speaking_silence(settings: Settings) -> None:
    with pytest.raises(EmptyReply):
        _pipeline(settings, FakeGenerator(answer="")).run(
            JobInput(job_id="j", reply=ReplyFormat.VOICE, text="hi"), Recorder()
        )


def test_a_reply_cut_by_max_tokens_ends_at_its_last_sentence(settings: Settings) -> None:
    class CutGenerator(FakeGenerator):
        def generate(self, messages: list[Message], **options: Any) -> Reply:
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
    assert progress.events == [(Stage.SYNTHESIZING, None)]  # nothing new to checkpoint
    assert pipeline.transcriber.heard == [] and generator.calls == []
    assert (outcome.transcript, outcome.reply, outcome.reply_text) == (None, None, "Four.")
    assert pipeline.synthesizer.spoken == [("Four.", settings.tts_voice)]


def test_a_checkpointed_transcript_skips_only_transcription(settings: Settings) -> None:
    generator = FakeGenerator(answer="Four.")
    pipeline = _pipeline(settings, generator)
    progress = Recorder()
    outcome = pipeline.run(
        JobInput(
            job_id="j",
            reply=ReplyFormat.TEXT,
            audio_path=Path("/nonexistent.wav"),
            transcript="what is two plus two",
        ),
        progress,
    )
    assert progress.events == [(Stage.GENERATING, None)]  # the transcript is checkpointed already
    assert generator.calls[0]["messages"][-1]["content"] == "what is two plus two"
    assert outcome.transcript is None and outcome.reply_text == "Four."


def test_reply_text_is_passed_on_as_it_is_generated(settings: Settings) -> None:
    progress = Recorder()
    _pipeline(settings, FakeGenerator(answer="One two three.")).run(
        JobInput(job_id="j", reply=ReplyFormat.TEXT, text="count"), progress
    )
    assert progress.deltas == ["One ", "two ", "three."]


def test_transcribe_operation_stops_after_the_transcript(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "q.wav"
    sf.write(path, tone(1.0), 16_000)
    generator = FakeGenerator()
    pipeline = _pipeline(settings, generator)
    outcome = pipeline.run(
        JobInput(
            job_id="j",
            reply=ReplyFormat.TEXT,
            operation=Operation.TRANSCRIBE,
            audio_path=path,
            options={"language": "fr", "prompt": "Paris"},
        ),
        Recorder(),
    )
    assert outcome.transcript is not None and outcome.reply is None and generator.calls == []
    assert pipeline.transcriber.options == {"language": "fr", "prompt": "Paris"}


def test_speak_operation_says_the_text_as_given(settings: Settings) -> None:
    generator = FakeGenerator()
    pipeline = _pipeline(settings, generator)
    outcome = pipeline.run(
        JobInput(
            job_id="j",
            reply=ReplyFormat.VOICE,
            operation=Operation.SPEAK,
            text="Read *this*.",
            options={"speed": 1.5},
        ),
        Recorder(),
    )
    assert outcome.audio is not None and generator.calls == []
    assert pipeline.synthesizer.spoken == [("Read *this*.", settings.tts_voice)]
    assert pipeline.synthesizer.speeds == [1.5]


def test_a_spoken_reply_is_synthesized_sentence_by_sentence_as_it_is_generated(
    settings: Settings,
) -> None:
    answer = "Paris is the capital. It is on the Seine! Shall I go on?"
    pipeline = _pipeline(settings, FakeGenerator(answer=answer))
    progress = Recorder()
    outcome = pipeline.run(JobInput(job_id="j", reply=ReplyFormat.VOICE, text="hi"), progress)
    spoken = ["Paris is the capital.", "It is on the Seine!", "Shall I go on?"]
    assert [text for text, _voice in pipeline.synthesizer.spoken] == spoken
    assert [(i, text) for i, text, _n in progress.sentences] == list(enumerate(spoken))
    # The first sentence is spoken while the model is still generating the second.
    assert progress.timeline.index("sentence:0") < progress.timeline.index("delta:It")
    assert progress.timeline.index("sentence:1") < progress.timeline.index("stage:synthesizing")
    # The stored reply is the sentences' audio joined, in order.
    assert outcome.audio is not None and len(outcome.audio.samples) == 3 * 2205
    assert outcome.reply_text == answer


def test_a_reply_cut_at_the_token_limit_speaks_only_its_whole_sentences(
    settings: Settings,
) -> None:
    generator = FakeGenerator(answer="One whole sentence. And half a", finish_reason="length")
    pipeline = _pipeline(settings, generator)
    progress = Recorder()
    outcome = pipeline.run(JobInput(job_id="j", reply=ReplyFormat.VOICE, text="hi"), progress)
    assert outcome.reply_text == "One whole sentence."
    assert [text for text, _voice in pipeline.synthesizer.spoken] == ["One whole sentence."]


def test_a_reply_resumed_after_its_checkpoint_speaks_every_sentence_once(
    settings: Settings,
) -> None:
    pipeline = _pipeline(settings)
    progress = Recorder()
    pipeline.run(
        JobInput(job_id="j", reply=ReplyFormat.VOICE, text="hi", reply_text="One. Two."),
        progress,
    )
    assert progress.timeline == ["stage:synthesizing", "sentence:0", "sentence:1"]
    assert [text for text, _voice in pipeline.synthesizer.spoken] == ["One.", "Two."]


@pytest.mark.parametrize(
    ("stream", "sentences"),
    [
        (["It costs 3.", "5 euros. ", "Fine"], ["It costs 3.5 euros.", "Fine"]),
        (['He said "go!" ', "and left.\n", "Bye"], ['He said "go!"', "and left.", "Bye"]),
        (["Wait", "…", " ", "what?"], ["Wait…", "what?"]),
        (["No end at all"], ["No end at all"]),
        # The first piece may end at a clause of four words or more; later ones only at sentences.
        (
            ["Well now, I think", ", that is it, yes. And so, then, ", "we go on, fine."],
            ["Well now, I think,", "that is it, yes.", "And so, then, we go on, fine."],
        ),
        (["Yes, it is. ", "Bye"], ["Yes, it is.", "Bye"]),
        (
            ["One two three four", ",", "000 is the count."],
            ["One two three four,000 is the count."],
        ),
        (["Paris is the capital: ", "a city"], ["Paris is the capital:", "a city"]),
    ],
)
def test_sentences_are_cut_only_once_they_are_complete(
    stream: list[str], sentences: list[str]
) -> None:
    cutter = SentenceCutter()
    heard = [sentence for piece in stream for sentence in cutter.feed(piece)]
    assert [*heard, *cutter.finish(whole_sentences=False)] == sentences
    assert split_sentences("".join(stream)) == sentences


def test_a_reply_cut_short_after_its_first_clause_is_spoken_whole() -> None:
    # trim_to_sentence keeps a reply with no sentence end whole: so must the voice.
    cutter = SentenceCutter()
    assert cutter.feed("The capital of France, as you know, is ") == ["The capital of France,"]
    assert cutter.finish(whole_sentences=True) == ["as you know, is"]
