"""A spoken reply streamed while it is made: each sentence (16-bit mono PCM, stored under its
attempt's name and announced as `speech`) sent on as soon as the worker has spoken it.

The reply's WAV is the sentences joined, so a stream that missed a sentence file (removed once
the WAV is stored) is finished from the WAV. A stream follows one attempt: if the job starts
again on another, it ends short (the client asks again, and hears the new attempt).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from flask import Response, current_app

from api.cancellation import canceled_on_leave
from api.follow import IDLE, client_left, follow, read_job, sse_response
from api.held_requests import Place
from models import event_log, storage
from models.tables import JobStatus

# A WAV header whose sizes say "unknown": the stream's length is known only at its end.
UNKNOWN_SIZE = 0xFFFFFFFF


def streaming_wav_header(sample_rate: int) -> bytes:
    # The `fmt ` chunk: its size, PCM, mono, the rate, bytes a second, bytes a frame, bits.
    fmt_chunk = (16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return struct.pack(
        "<4sI8sIHHIIHH4sI", b"RIFF", UNKNOWN_SIZE, b"WAVEfmt ", *fmt_chunk, b"data", UNKNOWN_SIZE
    )


@dataclass
class _Sent:
    """What a stream has sent so far, and how its samples are sent on."""

    with_header: bool
    resample_to: int | None = None
    rate: int | None = None
    samples: int = 0  # samples of the reply sent (before any resampling)
    broken: bool = False  # a sentence file was missing: the rest comes from the WAV
    resampler: soxr.ResampleStream | None = None

    def start(self, rate: int) -> Iterator[bytes]:
        """Begins the stream at the reply's sample rate: the WAV header, or a resampler."""
        self.rate = rate
        if self.with_header:
            yield streaming_wav_header(rate)
        elif self.resample_to is not None and self.resample_to != rate:
            self.resampler = soxr.ResampleStream(rate, self.resample_to, 1, dtype="int16")

    def send(self, samples: np.ndarray, *, last: bool = False) -> bytes:
        """The bytes of `samples` as this stream sends them (resampled where asked)."""
        self.samples += len(samples)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples, last=last)
        return bytes(np.asarray(samples, dtype="<i2").tobytes())


def stream_reply(
    job_id: str,
    attempt: int,
    place: Place,
    *,
    with_header: bool,
    resample_to: int | None = None,
    cancel_on_leave: bool = False,
) -> Response:
    """Streams a running voice job's reply of `attempt`, holding `place` until it ends: a WAV
    (`with_header`) or raw 16-bit little-endian PCM, at `resample_to` (OpenAI's `pcm` is 24 kHz).
    With `cancel_on_leave` (the OpenAI route's, whose job exists for this client alone), a
    client that leaves before the end cancels the job."""
    sent = _Sent(with_header=with_header, resample_to=resample_to)
    chunks = _chunks(job_id, attempt, place, sent)
    if cancel_on_leave:
        chunks = canceled_on_leave(job_id, chunks)
    response = sse_response(chunks, "audio/wav" if with_header else "audio/pcm")
    response.call_on_close(place.release)
    return response


def _chunks(job_id: str, attempt: int, place: Place, sent: _Sent) -> Iterator[bytes]:
    results: storage.Store = current_app.extensions["voicechat.results"]
    with place:
        for event in follow(job_id, row_read=True):
            if event.type == IDLE and client_left():
                return
            if event.type == event_log.STATUS and event.data.get("attempt", attempt) > attempt:
                return  # another attempt started: this one's reply will never be complete
            if event.type == event_log.SPEECH and event.data.get("attempt") == attempt:
                yield from _sentence(
                    results,
                    storage.sentence_name(job_id, attempt, int(event.data["index"])),
                    int(event.data["rate"]),
                    sent,
                )
            if event.type == event_log.DONE:
                yield from _rest_of_reply(results, job_id, sent)
        if sent.resampler is not None:
            yield sent.send(np.zeros(0, dtype=np.int16), last=True)


def _sentence(results: storage.Store, name: str, rate: int, sent: _Sent) -> Iterator[bytes]:
    if sent.broken:
        return
    try:
        pcm = results.read(name)
    except (FileNotFoundError, KeyError, OSError):
        sent.broken = True  # stored in the reply's WAV by now; sent from there at the end
        return
    if sent.rate is None:
        yield from sent.start(rate)
    yield sent.send(np.frombuffer(pcm, dtype="<i2"))


def _rest_of_reply(results: storage.Store, job_id: str, sent: _Sent) -> Iterator[bytes]:
    """What the sentences did not bring of a succeeded job's reply, from its stored WAV (only for
    a stream that missed a file or heard none: the log has every sentence before `done`)."""
    if sent.rate is not None and not sent.broken:
        return
    job = read_job(job_id)
    if job is None or job.status != JobStatus.SUCCEEDED.value or job.reply_audio_file is None:
        return
    samples, rate = sf.read(io.BytesIO(results.read(job.reply_audio_file)), dtype="int16")
    if sent.rate is None:
        yield from sent.start(rate)
    rest = np.asarray(samples[sent.samples :], dtype=np.int16)
    if len(rest):
        yield sent.send(rest)
