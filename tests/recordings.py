"""Recordings in the compressed formats browsers and OpenAI's clients send, made with PyAV's own
encoders, and the odd files the hostile-input tests need."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

# kind: (muxer, encoder, sample rate, muxer options). The WebM is written as MediaRecorder
# writes it (FFmpeg's `live`): no duration in its header, Segment and Clusters of unknown size.
FORMATS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "webm": ("webm", "libopus", 48_000, {"live": "1"}),
    "ogg": ("ogg", "libopus", 48_000, {}),
    "mp3": ("mp3", "libmp3lame", 22_050, {}),
    "m4a": ("ipod", "aac", 22_050, {}),
    "flac": ("flac", "flac", 22_050, {}),
}
# What `models.audio_containers.sniff` names each.
CONTAINERS = {"webm": "webm", "ogg": "ogg", "mp3": "mp3", "m4a": "mp4", "flac": "flac"}


def encode(wav: bytes, kind: str) -> bytes:
    """A WAV's samples (mono) encoded as `kind`, one of FORMATS."""
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    muxer, encoder, out_rate, options = FORMATS[kind]
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples[:, :1].T), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer, options=options) as out:
        stream = out.add_stream(encoder, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(
            format=stream.codec_context.format.name, layout="mono", rate=out_rate
        )
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def remuxed(recording: bytes, seconds: float, *, garbage: bool = False) -> bytes:
    """A MediaRecorder-like WebM (Matroska for a codec WebM does not take) of `seconds`, its
    packets copied from `recording`'s over and over, never encoded (so minutes cost
    milliseconds); with `garbage`, the packets' bytes are random."""
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    with av.open(io.BytesIO(recording)) as source:
        template = source.streams.audio[0]
        packets = [(bytes(p), p.duration or 1) for p in source.demux(template) if p.size]
        muxer = "webm" if template.codec_context.name in ("opus", "vorbis") else "matroska"
        with av.open(buffer, "w", format=muxer, options={"live": "1"}) as out:
            stream = out.add_stream_from_template(template)
            pts = index = 0
            while pts * template.time_base < seconds:
                payload, duration = packets[index % len(packets)]
                if garbage:
                    payload = rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()
                packet = av.Packet(payload)
                packet.pts = packet.dts = pts
                packet.duration, packet.time_base = duration, template.time_base
                packet.stream = stream
                out.mux(packet)
                pts += duration
                index += 1
    return buffer.getvalue()


def video_only() -> bytes:
    """An MP4 with one MPEG-4 video stream and no audio."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(10):
            image = np.full((48, 64, 3), index * 20, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def pcm_in_matroska(seconds: float = 1.0) -> bytes:
    """Matroska holding raw PCM: a container we read, a codec we do not take."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=16_000, layout="mono")
        samples = np.zeros((1, int(16_000 * seconds)), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()
