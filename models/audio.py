"""Uploaded recordings: validated at the edge and normalised for Whisper, decided by the bytes
alone (WAV here, with soundfile; the compressed containers in `models/audio_containers.py`)."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from models.errors import (
    AudioTooLong,
    EmptyAudio,
    InvalidAudio,
    TooManyChunks,
    TruncatedAudio,
    UnsupportedAudioEncoding,
    UnsupportedAudioFormat,
    UnsupportedChannelCount,
    UnsupportedSampleRate,
)
from models.settings import Settings

WHISPER_SAMPLE_RATE = 16_000

# WAVE format tags that libsndfile decodes: PCM, MS ADPCM, IEEE float, A-law, mu-law, IMA ADPCM,
# GSM 6.10 and WAVE_FORMAT_EXTENSIBLE (whose sub-format libsndfile checks itself).
_DECODABLE_FORMAT_TAGS = frozenset({0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0xFFFE})
# Streaming writers (arecord, ffmpeg to a pipe) cannot know the length up front and leave these.
_UNKNOWN_DATA_SIZES = frozenset({0, 0xFFFFFFFF})
_BLOCK_FRAMES = 1 << 16
# Chunks walked before the samples: real recordings carry a handful (fmt, fact, LIST, bext,
# iXML, JUNK, PEAK, cue); a file of millions of empty chunks would cost seconds to walk.
MAX_CHUNKS = 64
# Enough of a stored file to name its format (past an ID3 tag's padding; a longer tag is
# recognised as cut, which still names MP3).
_HEAD_BYTES = 64 * 1024
# The settings' defaults, for callers without settings.
_DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
_SAMPLE_RATES = (_DEFAULTS["min_audio_sample_rate"], _DEFAULTS["max_audio_sample_rate"])


@dataclass(frozen=True)
class AudioInfo:
    """What the validator learnt from a recording: a WAV's frames counted from the samples
    decoded, a compressed one's from its packets' durations."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str  # a WAV's sample encoding (PCM_16, ...), or the codec (opus, mp3, ...)
    container: str = "wav"

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def extension(self) -> str:
        """The extension the stored upload gets: the container's, never the client's."""
        if self.container == "wav":
            return "wav"
        from models.audio_containers import EXTENSIONS

        return EXTENSIONS[self.container]


@dataclass(frozen=True)
class _RiffLayout:
    format_tag: int | None = None
    channels: int | None = None
    sample_rate: int | None = None
    data_offset: int | None = None
    data_size: int | None = None


def looks_like_wav(data: bytes) -> bool:
    """Tells whether the bytes start like a RIFF/RF64 WAVE file."""
    return len(data) >= 12 and data[0:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE"


def _riff_layout(data: bytes) -> _RiffLayout:
    """Walks the top-level RIFF chunks (TooManyChunks past MAX_CHUNKS) for the format's tag,
    channels and sample rate, and the data chunk's offset and declared size."""
    fmt = _RiffLayout()
    offset = 12
    for _ in range(MAX_CHUNKS):
        if offset + 8 > len(data):
            return fmt
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt " and body + 8 <= len(data):
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            fmt = _RiffLayout(format_tag=tag, channels=channels, sample_rate=rate)
        elif chunk_id == b"fmt " and body + 2 <= len(data):
            fmt = _RiffLayout(format_tag=struct.unpack_from("<H", data, body)[0])
        elif chunk_id == b"data":
            return _RiffLayout(fmt.format_tag, fmt.channels, fmt.sample_rate, body, size)
        offset = body + size + (size & 1)  # chunks are padded to an even length
    if offset + 8 > len(data):
        return fmt
    raise TooManyChunks(f"The WAV has more than {MAX_CHUNKS} chunks before its samples.")


def inspect_wav(
    data: bytes,
    max_seconds: float,
    *,
    max_channels: int = _DEFAULTS["max_audio_channels"],
    sample_rates: tuple[int, int] = _SAMPLE_RATES,
) -> AudioInfo:
    """Validates and measures an uploaded WAV; raises the `InvalidAudio` or
    `UnsupportedAudioFormat` subclass that says what is wrong.

    The header is checked before decoding, which bounds its cost; the duration is counted from the
    decoded samples, never the header, so a 44-byte file that claims hours is caught as truncated.
    """
    if not data:
        raise EmptyAudio("The audio is empty (zero bytes).")
    if not looks_like_wav(data):
        raise UnsupportedAudioFormat("The audio is not a WAV file (no RIFF/WAVE header).")
    layout = _riff_layout(data)
    if layout.format_tag is not None and layout.format_tag not in _DECODABLE_FORMAT_TAGS:
        raise UnsupportedAudioEncoding(
            f"WAV sample encoding 0x{layout.format_tag:04x} is not supported; "
            "send PCM (8/16/24/32-bit) or float samples."
        )
    if (
        data[0:4] == b"RIFF"
        and layout.data_offset is not None
        and layout.data_size is not None
        and layout.data_size not in _UNKNOWN_DATA_SIZES
        and layout.data_offset + layout.data_size > len(data)
    ):
        raise TruncatedAudio(
            f"The WAV is truncated: its data chunk declares {layout.data_size} bytes "
            f"but only {len(data) - layout.data_offset} arrived."
        )
    _check_shape(layout.channels, layout.sample_rate, max_channels, sample_rates)
    try:
        with sf.SoundFile(io.BytesIO(data)) as wav:
            sample_rate, channels, subtype = wav.samplerate, wav.channels, wav.subtype
            if sample_rate <= 0 or channels <= 0:
                raise InvalidAudio("The WAV header has no valid sample rate or channel count.")
            _check_shape(channels, sample_rate, max_channels, sample_rates)
            frames, limit = 0, int(max_seconds * sample_rate)
            for block in wav.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                frames += len(block)
                if frames > limit:
                    raise AudioTooLong(
                        f"The audio is longer than the limit of {max_seconds:g} seconds."
                    )
    except (sf.LibsndfileError, RuntimeError, ValueError, struct.error) as error:
        raise InvalidAudio("The WAV file is corrupt and cannot be decoded.") from error
    if frames == 0:
        raise EmptyAudio("The audio holds no samples.")
    return AudioInfo(sample_rate=sample_rate, channels=channels, frames=frames, subtype=subtype)


def inspect_upload(data: bytes, settings: Settings) -> AudioInfo:
    """Validates an uploaded recording under the settings' audio limits, its format decided by
    its bytes (never its label or file name); compressed ones are measured without decoding.

    Raises `UnsupportedAudioFormat` (415, with its subclasses) or an `InvalidAudio` subclass.
    """
    sample_rates = (settings.min_audio_sample_rate, settings.max_audio_sample_rate)
    if not data:
        raise EmptyAudio("The audio is empty (zero bytes).")
    if looks_like_wav(data):
        return inspect_wav(
            data,
            settings.max_audio_seconds,
            max_channels=settings.max_audio_channels,
            sample_rates=sample_rates,
        )
    from models import audio_containers  # PyAV, only once a compressed recording comes

    container = audio_containers.sniff(data)
    if container is None:
        raise UnsupportedAudioFormat(
            "The audio is none of WAV, WebM, Ogg, MP3, MP4/M4A or FLAC (decided by its bytes, "
            "not its label or file name)."
        )
    return audio_containers.probe(
        data,
        container,
        settings.max_audio_seconds,
        lambda channels, rate: _check_shape(
            channels, rate, settings.max_audio_channels, sample_rates
        ),
    )


def _check_shape(
    channels: int | None, sample_rate: int | None, max_channels: int, sample_rates: tuple[int, int]
) -> None:
    """Refuses a channel count or sample rate outside the limits; None is not yet known."""
    if channels is not None and channels > max_channels:
        raise UnsupportedChannelCount(
            f"The recording has {channels} channels; at most {max_channels} are accepted."
        )
    low, high = sample_rates
    if sample_rate is not None and sample_rate > 0 and not low <= sample_rate <= high:
        raise UnsupportedSampleRate(
            f"The recording's sample rate is {sample_rate} Hz; {low} to {high} Hz is accepted."
        )


def load_for_transcription(
    path: str | Path, max_seconds: float = _DEFAULTS["max_audio_seconds"]
) -> np.ndarray:
    """A recording `inspect_upload` accepted as 16 kHz mono float32 in [-1, 1], as Whisper
    expects; a compressed one is decoded up to `max_seconds` (AudioTooLong past it)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if not looks_like_wav(head):
        from models import audio_containers

        container = audio_containers.sniff(head)
        if container is None:
            raise InvalidAudio("The stored recording is in no format this service reads.")
        return audio_containers.decode(path, container, max_seconds)
    import soxr  # only the worker resamples

    try:
        samples, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise InvalidAudio("The stored recording cannot be decoded.") from error
    mono = samples.mean(axis=1, dtype=np.float32)
    if sample_rate != WHISPER_SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, WHISPER_SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
