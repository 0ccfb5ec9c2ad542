"""What a waiting command shows: the job's stage on stderr (on a terminal, one line redrawn in
place, never over the streaming reply), the reply text on stdout."""

from __future__ import annotations

import time
from typing import TextIO

PREFIX = "voicechat: "
_ERASE = "\r\033[K"  # back to the line's start, and clear it


class Progress:
    """The display of one job, or of several in turn (`voicechat chat`)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.live = err.isatty()
        self.text_on_terminal = self.live and out.isatty()
        self.started = time.monotonic()
        self.shown = ""  # the stage line on the terminal now, if any
        self.received = ""  # the reply text received so far
        self.streamed = ""  # the part of it written to stdout
        self.line_open = False  # stdout holds the start of a line

    def start(self) -> None:
        """Begins a new job's display."""
        self.started = time.monotonic()
        self.received = self.streamed = ""

    def stage(self, name: str) -> None:
        """Shows the stage the job is in (queued, transcribing, generating, synthesizing)."""
        seconds = time.monotonic() - self.started
        line = f"{PREFIX}{name} ({seconds:.1f} s)"
        if not self.live:
            self.err.write(line + "\n")
        elif not (self.text_on_terminal and self.streamed):
            self.err.write(_ERASE + line)
            self.shown = line
        self.err.flush()

    def note(self, message: str) -> None:
        """Writes a message line on stderr, keeping the stage line below it."""
        self._clear()
        if self.text_on_terminal:
            self.end_line()
        self.err.write(PREFIX + message + "\n")
        if self.shown:
            self.err.write(self.shown)
        self.err.flush()

    def text(self, piece: str) -> None:
        """Writes the next piece of the reply, holding back white space at its ends until more."""
        self.received += piece
        visible = self.received.strip()
        if len(visible) == len(self.streamed):
            return
        if self.text_on_terminal:
            self.done()
        self.out.write(visible[len(self.streamed) :])
        self.out.flush()
        self.line_open = True
        self.streamed = visible

    def restart_text(self) -> None:
        """The reply starts over (the job's attempt was lost and it runs again)."""
        self.end_line()
        self.received = self.streamed = ""

    def final(self, text: str) -> None:
        """Ends the reply: written again whole if what streamed differs (a lost attempt's words)."""
        if self.streamed != text.strip():
            self.end_line()
            self.out.write(text.strip())
        self.out.write("\n")
        self.out.flush()
        self.line_open = False
        self.done()

    def done(self) -> None:
        """Removes the stage line from the terminal."""
        self._clear()
        self.shown = ""

    def end_line(self) -> None:
        """Ends the line of reply text on stdout, if one is open."""
        if self.line_open:
            self.out.write("\n")
            self.out.flush()
            self.line_open = False

    def _clear(self) -> None:
        if self.live and self.shown:
            self.err.write(_ERASE)
            self.err.flush()
