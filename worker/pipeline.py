"""The whisper → LLM → TTS pipeline as plain Python; the Celery task only drives it."""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from models.audio import load_for_transcription
from models.errors import ContextLengthExceeded, EmptyReply
from models.settings import Settings
from models.tables import Operation, ReplyFormat, Stage
from worker.engines import (
    Audio,
    Generator,
    Message,
    Reply,
    Sampling,
    Synthesizer,
    Transcriber,
    Transcript,
)
from worker.sentences import Speaker, split_sentences

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your answer will be read aloud, so reply in one to "
    "three short, complete sentences of plain conversational English, with no lists, "
    "markdown, code, emoji or URLs."
)

# Markup that a language model likes to emit and a voice should not read out.
_MARKUP = re.compile(r"[*_`#>|~]+|\[(?P<label>[^\]]*)\]\([^)]*\)")


_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cuts a reply that ran out of tokens back to its last complete sentence, if it has one."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else text


def speakable(text: str) -> str:
    """Strips markdown emphasis, headings and links so the voice reads words only."""
    cleaned = _MARKUP.sub(lambda m: m.group("label") or " ", text)
    return re.sub(r"\s+", " ", cleaned).strip()


@dataclass(frozen=True)
class JobInput:
    """What the pipeline needs to know about a job."""

    job_id: str
    reply: ReplyFormat
    operation: Operation = Operation.CHAT
    text: str | None = None
    audio_path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Earlier turns of the conversation, oldest first; trimmed to fit the context window.
    history: tuple[Message, ...] = ()
    # Checkpoints of an earlier attempt: a redelivered job resumes after them.
    transcript: str | None = None
    reply_text: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a pipeline run produced; stages resumed from a checkpoint leave their field None."""

    transcript: Transcript | None = None
    reply: Reply | None = None
    reply_text: str = ""
    audio: Audio | None = None


class Progress(Protocol):
    """Told of each stage as it starts, of the reply text as it comes, and of each sentence."""

    def enter(self, stage: Stage, done: Transcript | Reply | None = None) -> None:
        """`stage` starts; `done` is the previous stage's result to checkpoint (None: none ran)."""

    def delta(self, text: str) -> None:
        """Passes on a piece of reply text as the language model produces it."""

    def sentence(self, index: int, text: str, audio: Audio) -> None:
        """Passes on sentence `index` (from 0) as soon as it is synthesized."""


def fit_to_context(
    generator: Generator,
    head: list[Message],
    history: list[Message],
    prompt: Message,
    max_tokens: int,
) -> list[Message]:
    """Drops the oldest turns of `history` until the chat leaves room for `max_tokens`: the cut
    is found by bisection, then moved forward to a user turn (never an orphaned answer)."""
    budget = generator.context_tokens - max_tokens

    def fits(start: int) -> bool:
        return generator.count_tokens([*head, *history[start:], prompt]) <= budget

    if not fits(len(history)):
        needed = generator.count_tokens([*head, prompt])
        raise ContextLengthExceeded(
            f"The prompt takes {needed} tokens and the reply may take {max_tokens}: more than "
            f"the model's {generator.context_tokens}-token context window."
        )
    start = bisect.bisect_left(range(len(history)), True, key=fits)
    if start > 0:
        while start < len(history) and history[start]["role"] != "user":
            start += 1
    return [*head, *history[start:], prompt]


@dataclass(eq=False)
class Pipeline:
    """Runs one job through the loaded engines."""

    settings: Settings
    transcriber: Transcriber
    generator: Generator
    synthesizer: Synthesizer

    def messages_for(
        self, prompt: str, options: dict[str, Any], history: tuple[Message, ...] = ()
    ) -> list[Message]:
        """Builds the chat for a prompt: the system prompt, the history that fits, the prompt."""
        system = options.get("system", DEFAULT_SYSTEM_PROMPT)
        head: list[Message] = [{"role": "system", "content": system}] if system else []
        # System messages sent in the history (OpenAI's `messages`) are kept like the head.
        head += [m for m in history if m["role"] == "system"]
        turns = [m for m in history if m["role"] != "system"]
        return fit_to_context(
            self.generator,
            head,
            turns,
            {"role": "user", "content": prompt},
            self._max_tokens(options),
        )

    def run(self, job: JobInput, progress: Progress) -> Outcome:
        """Runs the job's operation: chat (hearing and speaking as asked), transcribe, or speak."""
        if job.operation is Operation.TRANSCRIBE:
            progress.enter(Stage.TRANSCRIBING)
            return Outcome(transcript=self._transcribe(job))
        if job.operation is Operation.SPEAK:
            progress.enter(Stage.SYNTHESIZING)
            speaker = self._speaker(job, progress, str.strip)
            speaker.say(split_sentences(job.text or ""))
            return Outcome(audio=_spoken(speaker))
        return self._chat(job, progress)

    def _chat(self, job: JobInput, progress: Progress) -> Outcome:
        """Hears, answers and speaks, skipping checkpointed stages; speech starts mid-reply."""
        transcript: Transcript | None = None
        reply: Reply | None = None
        reply_text = job.reply_text
        speaker = self._speaker(job, progress) if job.reply is ReplyFormat.VOICE else None
        if reply_text is None:
            prompt = job.transcript or job.text
            if prompt is None:
                progress.enter(Stage.TRANSCRIBING)
                transcript = self._transcribe(job)
                prompt = transcript.text
            progress.enter(Stage.GENERATING, done=transcript)
            reply = self._generate(prompt, job, progress, speaker)
            reply_text = reply.text
        if speaker is None:
            return Outcome(transcript, reply, reply_text)
        progress.enter(Stage.SYNTHESIZING, done=reply)
        if reply is None:  # resumed after the reply's checkpoint: all of it is still to speak
            speaker.say(split_sentences(reply_text))
        else:
            speaker.end(whole_sentences=self._whole_sentences(job, reply))
        return Outcome(transcript, reply, reply_text, _spoken(speaker))

    def _speaker(
        self, job: JobInput, progress: Progress, words: Callable[[str], str] = speakable
    ) -> Speaker:
        voice = job.options.get("voice", self.settings.tts_voice)
        speed = job.options.get("speed", 1.0)
        speak = functools.partial(self.synthesizer.synthesize, voice=voice, speed=speed)
        return Speaker(speak, words, progress.sentence)

    def _transcribe(self, job: JobInput) -> Transcript:
        assert job.audio_path is not None
        return self.transcriber.transcribe(
            load_for_transcription(job.audio_path, self.settings.max_audio_seconds),
            language=job.options.get("language"),
            prompt=job.options.get("prompt"),
        )

    def _max_tokens(self, options: dict[str, Any]) -> int:
        return int(options.get("max_tokens", self.settings.default_max_tokens))

    @staticmethod
    def _whole_sentences(job: JobInput, reply: Reply) -> bool:
        # A voice should not stop mid-sentence, and the text should match what is said.
        # (The OpenAI route turns this off: its clients expect the raw cut and "length".)
        return reply.finish_reason == "length" and bool(job.options.get("whole_sentences", True))

    def _generate(
        self, prompt: str, job: JobInput, progress: Progress, speaker: Speaker | None
    ) -> Reply:
        def on_delta(text: str) -> None:
            progress.delta(text)
            if speaker is not None:
                speaker.hear(text)

        reply = self.generator.generate(
            self.messages_for(prompt, job.options, job.history),
            max_tokens=self._max_tokens(job.options),
            temperature=job.options.get("temperature", self.settings.default_temperature),
            sampling=Sampling.of(job.options),
            on_delta=on_delta,
        )
        if speaker is not None:  # the sentences spoken meanwhile are not the model's time
            reply = replace(reply, seconds=max(0.0, reply.seconds - speaker.seconds))
        if self._whole_sentences(job, reply):
            reply = replace(reply, text=trim_to_sentence(reply.text))
        if not reply.text:
            raise EmptyReply("The language model produced an empty reply.")
        return reply


def _spoken(speaker: Speaker) -> Audio:
    """The reply's audio: its sentences joined (EmptyReply when none had words)."""
    audio = speaker.joined()
    if audio is None:
        raise EmptyReply("The reply has no words to speak.")
    return audio
