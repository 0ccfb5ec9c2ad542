"""Speaking a reply sentence by sentence as it is generated, so the first audio comes early."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from worker.engines import Audio

# A sentence ends at . ! ? or … (with closing quotes or brackets), once whitespace follows: in a
# stream, the end of the text so far is not yet the end of a sentence ("3." may become "3.5").
_STREAMED_END = re.compile(r"[.!?\u2026][\"')\]]*(?=\s)")
# A clause ends at , ; or : once whitespace follows ("1,000" is no end).
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
# The first piece may end at a clause of this many words or more, so a long first sentence is
# heard from its first clause (issue 22); later ones are whole sentences, for a natural voice.
FIRST_CLAUSE_WORDS = 4


class SentenceCutter:
    """Collects streamed text and hands out each sentence as soon as it is complete (the first
    from its first clause of `FIRST_CLAUSE_WORDS` words or more)."""

    def __init__(self) -> None:
        self._pending = ""
        self.cut = 0  # pieces handed out so far
        self._ended = False  # whether a sentence ended, not only a clause

    def feed(self, text: str) -> list[str]:
        """Adds streamed text; returns the sentences it completed, trimmed, in order."""
        self._pending += text
        pieces = []
        while end := self._next_end():
            piece = self._pending[:end].strip()
            self._pending = self._pending[end:]
            if piece:
                pieces.append(piece)
                self.cut += 1
        return pieces

    def _next_end(self) -> int | None:
        sentence = _STREAMED_END.search(self._pending)
        if not self.cut:
            before = sentence.start() if sentence else len(self._pending)
            for clause in _CLAUSE_END.finditer(self._pending, 0, before):
                if len(self._pending[: clause.end()].split()) >= FIRST_CLAUSE_WORDS:
                    return clause.end()
        if sentence is None:
            return None
        self._ended = True
        return sentence.end()

    def finish(self, *, whole_sentences: bool) -> list[str]:
        """The text left when the stream ends, as a last sentence; dropped with `whole_sentences`
        unless no sentence ended (`trim_to_sentence` keeps it whole then)."""
        rest, self._pending = self._pending.strip(), ""
        if not rest or (whole_sentences and self._ended):
            return []
        self.cut += 1
        return [rest]


def split_sentences(text: str) -> list[str]:
    """A whole text's sentences, cut as a stream of it would be."""
    cutter = SentenceCutter()
    return [*cutter.feed(text), *cutter.finish(whole_sentences=False)]


@dataclass(eq=False)
class Speaker:
    """Synthesizes sentences one at a time, each passed to `on_sentence(index, text, audio)`."""

    synthesize: Callable[[str], Audio]
    speakable: Callable[[str], str]
    on_sentence: Callable[[int, str, Audio], None]
    cutter: SentenceCutter = field(default_factory=SentenceCutter, init=False)
    parts: list[Audio] = field(default_factory=list, init=False)
    seconds: float = field(default=0.0, init=False)  # time spent synthesizing

    def hear(self, text: str) -> None:
        """Takes a piece of streamed reply text; speaks each sentence it completes."""
        self.say(self.cutter.feed(text))

    def end(self, *, whole_sentences: bool) -> None:
        """The stream ended: speaks what is left of it (see `SentenceCutter.finish`)."""
        self.say(self.cutter.finish(whole_sentences=whole_sentences))

    def say(self, sentences: list[str]) -> None:
        """Speaks each sentence that has words, and passes its audio on."""
        for sentence in sentences:
            words = self.speakable(sentence)
            if not words:
                continue
            started = time.perf_counter()
            audio = self.synthesize(words)
            self.seconds += time.perf_counter() - started
            self.parts.append(audio)
            self.on_sentence(len(self.parts) - 1, sentence, audio)

    def joined(self) -> Audio | None:
        """All the sentences' audio as one, or None when nothing had words."""
        if not self.parts:
            return None
        samples = np.concatenate([part.samples for part in self.parts])
        return Audio(samples, self.parts[0].sample_rate, self.seconds)
