"""The whisper → LLM → TTS pipeline as plain Python; the Celery task only drives it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from models.audio import load_for_transcription
from models.errors import EmptyReply
from models.job import ReplyFormat, Stage
from models.settings import Settings
from worker.engines import Audio, Generator, Message, Reply, Synthesizer, Transcriber, Transcript

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
    text: str | None = None
    audio_path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Checkpoints of an earlier attempt: a redelivered job resumes after them.
    transcript: str | None = None
    reply_text: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a pipeline run produced; stages resumed from a checkpoint leave their field None."""

    transcript: Transcript | None
    reply: Reply | None
    reply_text: str
    audio: Audio | None


class Progress(Protocol):
    """Receives stage changes with the results of the stage just finished (checkpoints)."""

    def enter(self, stage: Stage, **checkpoint: Any) -> None:
        """Records that `stage` started, with what the previous stage produced."""
        ...


class Pipeline:
    """Runs one job through the loaded engines."""

    def __init__(
        self,
        settings: Settings,
        transcriber: Transcriber,
        generator: Generator,
        synthesizer: Synthesizer,
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.generator = generator
        self.synthesizer = synthesizer

    def messages_for(self, prompt: str, options: dict[str, Any]) -> list[Message]:
        """Builds the chat for a prompt, with the caller's or the default system prompt."""
        system = options.get("system", DEFAULT_SYSTEM_PROMPT)
        messages: list[Message] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return messages

    def run(self, job: JobInput, progress: Progress) -> Outcome:
        """Transcribes (for audio), generates, and synthesises (for voice replies).

        Args:
            job: The job's input and options.
            progress: Told of each stage as it starts, with the previous stage's results.

        Returns:
            The transcript, the reply and the spoken reply, as applicable.

        Raises:
            VoiceChatError: A domain error (no speech, context too long, empty reply, ...).
        """
        transcript = None
        reply: Reply | None = None
        reply_text = job.reply_text
        if reply_text is None:
            prompt = job.transcript or job.text
            if prompt is None:
                assert job.audio_path is not None
                progress.enter(Stage.TRANSCRIBING)
                transcript = self.transcriber.transcribe(
                    load_for_transcription(str(job.audio_path))
                )
                prompt = transcript.text
                progress.enter(
                    Stage.GENERATING, transcript=transcript.text, transcribe_s=transcript.seconds
                )
            else:
                progress.enter(Stage.GENERATING)
            reply = self._generate(prompt, job.options)
            reply_text = reply.text
        audio = None
        if job.reply is ReplyFormat.VOICE:
            if reply is not None:
                progress.enter(Stage.SYNTHESIZING, reply_text=reply.text, generate_s=reply.seconds)
            else:
                progress.enter(Stage.SYNTHESIZING)
            spoken = speakable(reply_text)
            if not spoken:
                raise EmptyReply("The reply has no words to speak.")
            audio = self.synthesizer.synthesize(
                spoken, voice=job.options.get("voice", self.settings.tts_voice)
            )
        return Outcome(transcript=transcript, reply=reply, reply_text=reply_text, audio=audio)

    def _generate(self, prompt: str, options: dict[str, Any]) -> Reply:
        reply = self.generator.generate(
            self.messages_for(prompt, options),
            max_tokens=options.get("max_tokens", self.settings.default_max_tokens),
            temperature=options.get("temperature", self.settings.default_temperature),
        )
        if reply.finish_reason == "length":
            # A voice should not stop mid-sentence, and the text should match what is said.
            reply = replace(reply, text=trim_to_sentence(reply.text))
        if not reply.text:
            raise EmptyReply("The language model produced an empty reply.")
        return reply
