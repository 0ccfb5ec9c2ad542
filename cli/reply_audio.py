"""The spoken reply saved to a file while the job makes it, sentence by sentence: a WAV whose
sizes say "unknown" (0xFFFFFFFF) until they are written in at the end, so every reader takes it."""

from __future__ import annotations

import logging
import threading
import wave
from pathlib import Path
from typing import BinaryIO

from cli.service import Service, ServiceError

_LOGGER = logging.getLogger(__name__)


class ReplyAudio:
    """Saves a job's spoken reply to `path` in a thread of its own, from the moment the job is
    submitted; `finish` completes the file or removes it. FileExistsError unless `force`."""

    def __init__(self, service: Service, path: Path, force: bool, wait_seconds: float) -> None:
        self.service = service
        self.path = path
        self.wait_seconds = wait_seconds
        self.file: BinaryIO = path.open("wb+" if force else "xb+")
        self.whole = False  # the stream ended as the reply did, not on an error
        self.thread: threading.Thread | None = None

    def start(self, job_id: str) -> None:
        """Starts streaming the reply of `job_id` into the file."""
        self.thread = threading.Thread(target=self._stream, args=(job_id,), daemon=True)
        self.thread.start()

    def _stream(self, job_id: str) -> None:
        try:
            self.service.download_audio(job_id, self.file, self.wait_seconds)
            self.whole = True
        except (ServiceError, OSError, ValueError) as error:  # ValueError: the file was closed
            _LOGGER.debug("reply stream broke job_id=%s error=%s", job_id, error)

    def finish(self, job: dict[str, object]) -> None:
        """Completes the file once `job` succeeded, fetching the stored reply again if the stream
        was not whole (it failed, or the job took another attempt)."""
        if self.thread is not None:
            self.thread.join(timeout=30)
        streamed = self.whole and self.thread is not None and not self.thread.is_alive()
        if not streamed or job.get("attempts") != 1:
            _LOGGER.debug("fetching the stored reply again job_id=%s", job.get("id"))
            self.file.seek(0)
            self.file.truncate()
            self.service.download_audio(str(job["id"]), self.file, self.wait_seconds)
        set_wav_sizes(self.file)
        self.file.close()

    def discard(self) -> None:
        """Closes and removes the file (a canceled or failed job's, or an interrupted one)."""
        self.file.close()
        self.path.unlink(missing_ok=True)


def set_wav_sizes(wav: BinaryIO) -> None:
    """Rewrites a 16-bit WAV whose sizes say "unknown" with its real sizes (`wave` reads such a
    header up to the end of the file). A file that is not a WAV is left as it is."""
    wav.seek(0)
    try:
        with wave.open(wav, "rb") as reader:
            params, frames = reader.getparams(), reader.readframes(reader.getnframes())
    except (wave.Error, EOFError):
        return
    wav.seek(0)
    wav.truncate()
    with wave.open(wav, "wb") as writer:
        writer.setparams(params._replace(nframes=0))  # written on close, as counted
        writer.writeframes(frames)
    wav.flush()
