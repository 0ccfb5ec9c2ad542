"""Compressed recordings (WebM, Ogg, MP3, MP4/M4A, FLAC) through PyAV: sniffed, probed without
decoding at the edge, decoded to 16 kHz mono by the worker."""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import av
import av.container
import numpy as np

from models.audio import WHISPER_SAMPLE_RATE, AudioInfo
from models.errors import (
    AudioTooLong,
    EmptyAudio,
    InvalidAudio,
    NoAudioStream,
    TruncatedAudio,
    UnsupportedAudioCodec,
    UnsupportedAudioFormat,
)

_LOGGER = logging.getLogger(__name__)

WEBM, OGG, MP3, MP4, FLAC = "webm", "ogg", "mp3", "mp4", "flac"
# The FFmpeg demuxer each container is opened with. Named, so FFmpeg never probes the bytes for
# another format (some demuxers, such as HLS or concat, would open further files or URLs).
_DEMUXERS = {WEBM: "matroska", OGG: "ogg", MP3: "mp3", MP4: "mp4", FLAC: "flac"}
_NAMES = {WEBM: "WebM", OGG: "Ogg", MP3: "MP3", MP4: "MP4", FLAC: "FLAC"}
# The extension a stored upload gets from its container (the client's file name never counts).
EXTENSIONS = {WEBM: "webm", OGG: "ogg", MP3: "mp3", MP4: "m4a", FLAC: "flac"}
# Codecs, by FFmpeg's canonical names, that browsers record and OpenAI's clients send.
ACCEPTED_CODECS = frozenset({"opus", "vorbis", "mp3", "aac", "flac", "alac"})

# Elements, pages or boxes walked to find a cut: Chromium's MediaRecorder writes a WebM block
# per 60 ms, so ten minutes are 10,000; past this bound the walk gives no verdict.
_MAX_ELEMENTS = 200_000
# At most one packet per 2.5 ms (Opus' shortest frame): more is no real recording.
_MAX_PACKETS_PER_SECOND = 400
# Codec delay and padding make packets cover slightly more or less than a header declares (an
# encoder's last frame is padded; Opus' pre-skip is counted on one side only): a few hundredths
# of a second, so that 0.1 s less is a cut, and 0.25 s more than the limit is too long.
_SLACK_SECONDS = 0.25
_CUT_SECONDS = 0.1
_ID3_HEADER = 10
# Zero bytes some taggers leave between an ID3 tag and the first MPEG frame.
_MAX_ID3_PADDING = 64 * 1024
# What PyAV may raise on hostile bytes: FFmpeg's errors, and its own on values out of range or a
# resampler fed frames whose layout changed mid-stream.
_READ_ERRORS = (av.FFmpegError, ValueError, UnicodeError, OverflowError)

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_SEGMENT = 0x18538067
_EBML_CLUSTER = 0x1F43B675
# (offset, magic, container); MP3, which may start with an ID3 tag, is sniffed apart.
_MAGIC = ((0, _EBML_MAGIC, WEBM), (0, b"OggS", OGG), (0, b"fLaC", FLAC), (4, b"ftyp", MP4))


def sniff(data: bytes) -> str | None:
    """The container the bytes start like, by magic numbers alone (WAV is `models.audio`'s)."""
    for offset, magic, container in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return container
    tag_end = _id3_end(data)
    if tag_end is None:
        return MP3 if _mpeg_frame_at(data, 0) else None
    if tag_end > len(data):
        return MP3  # a tag cut short: the structure check calls it truncated
    padding = data[tag_end : tag_end + _MAX_ID3_PADDING]
    first_frame = tag_end + len(padding) - len(padding.lstrip(b"\0"))
    return MP3 if _mpeg_frame_at(data, first_frame) else None


def _id3_end(data: bytes) -> int | None:
    """Where an ID3v2 tag at the start ends (maybe past the bytes), or None without one."""
    if len(data) < _ID3_HEADER or data[:3] != b"ID3" or data[3] not in (2, 3, 4):
        return None
    if any(byte & 0x80 for byte in data[6:10]):  # sizes are syncsafe: 7 bits a byte
        return None
    size = sum(byte << (7 * (3 - index)) for index, byte in enumerate(data[6:10]))
    footer = _ID3_HEADER if data[5] & 0x10 else 0
    return _ID3_HEADER + size + footer


def _mpeg_frame_at(data: bytes, offset: int) -> bool:
    """Whether an MPEG audio layer III frame header starts at `offset`."""
    if offset + 4 > len(data):
        return False
    first, second, third = data[offset], data[offset + 1], data[offset + 2]
    return (
        first == 0xFF
        and second & 0xE0 == 0xE0  # frame sync
        and (second >> 3) & 3 != 1  # MPEG version: 1 is reserved
        and (second >> 1) & 3 == 1  # layer III
        and third >> 4 not in (0, 15)  # bitrate index: free format or invalid
        and (third >> 2) & 3 != 3  # sample rate index: reserved
    )


def probe(
    data: bytes,
    container: str,
    max_seconds: float,
    check_shape: Callable[[int, int], None] | None = None,
) -> AudioInfo:
    """Measures a recording by its structure, header and demuxed (not decoded) packets, counted
    up to `max_seconds`: a header may lie or say nothing (MediaRecorder writes none), packets
    cannot."""
    name = _NAMES[container]
    if _cut_short(data, container):
        raise TruncatedAudio(f"The {name} recording is truncated: its data is cut short.")
    try:
        with _open(io.BytesIO(data), container) as reader:
            stream = _audio_stream(reader, container)
            codec = stream.codec_context
            sample_rate, channels = int(codec.sample_rate or 0), int(codec.channels or 0)
            if sample_rate <= 0 or channels <= 0:
                raise UnsupportedAudioFormat(
                    f"The {name} recording states no sample rate or channel count."
                )
            if check_shape is not None:
                check_shape(channels, sample_rate)
            declared = _declared_seconds(reader, stream, container, data)
            if declared is not None and declared > max_seconds + _SLACK_SECONDS:
                raise AudioTooLong(
                    f"The audio is longer than the limit of {max_seconds:g} seconds "
                    f"(its header says {declared:.1f})."
                )
            codec_name = _codec_name(stream)
            seconds = _demuxed_seconds(reader, stream, max_seconds)
    except _READ_ERRORS as error:
        raise UnsupportedAudioFormat(f"The {name} recording cannot be read.") from error
    if declared is not None and seconds < declared - _CUT_SECONDS - 0.01 * declared:
        raise TruncatedAudio(
            f"The {name} recording is truncated: its header declares {declared:.2f} s "
            f"but its packets hold {seconds:.2f} s."
        )
    frames = max(1, round(seconds * sample_rate))
    return AudioInfo(sample_rate, channels, frames, subtype=codec_name, container=container)


def decode(path: Path | str, container: str, max_seconds: float) -> np.ndarray:
    """Decodes to 16 kHz mono float32 for Whisper, stopping past `max_seconds`; a refused packet is
    skipped, as players do, and a recording mostly refused is invalid."""
    limit = int((max_seconds + _SLACK_SECONDS) * WHISPER_SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    samples = decoded = refused = 0
    try:
        with _open(str(path), container) as reader:
            stream = _audio_stream(reader, container)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_SAMPLE_RATE)
            for packet in reader.demux(stream):
                try:
                    frames = packet.decode()  # the last, empty, packet flushes the decoder
                except av.InvalidDataError:
                    refused += 1
                    continue
                decoded += 1 if packet.size else 0
                for out in (out for frame in frames for out in resampler.resample(frame)):
                    chunks.append(out.to_ndarray()[0])
                    samples += out.samples
                if samples > limit:
                    raise AudioTooLong(
                        f"The audio is longer than the limit of {max_seconds:g} seconds."
                    )
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray()[0])
                samples += out.samples
    except _READ_ERRORS as error:
        raise InvalidAudio("The stored recording cannot be decoded.") from error
    if refused > decoded or not samples:
        _LOGGER.info("recording undecodable packets=%d refused=%d", decoded + refused, refused)
        raise InvalidAudio("The stored recording cannot be decoded.")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def _open(source: Any, container: str) -> av.container.InputContainer:
    # Tags are shown to no one: text that is not UTF-8 must not fail the read.
    reader = av.open(source, "r", format=_DEMUXERS[container], metadata_errors="ignore")
    return cast(av.container.InputContainer, reader)


def _audio_stream(reader: av.container.InputContainer, container: str) -> Any:
    """The first audio stream, in a codec we take."""
    if not reader.streams.audio:
        raise NoAudioStream(f"The {_NAMES[container]} file holds no audio stream.")
    stream = reader.streams.audio[0]
    codec = _codec_name(stream)
    if codec not in ACCEPTED_CODECS:
        raise UnsupportedAudioCodec(
            f"The {_NAMES[container]} file's audio is {codec}; send Opus, Vorbis, MP3, AAC, "
            "FLAC or ALAC (or a WAV)."
        )
    return stream


def _codec_name(stream: Any) -> str:
    # A damaged header can leave PyAV's stream with no codec context (found by
    # tests/contract/test_hostile_input.py): an unknown codec, refused like any other.
    context = stream.codec_context
    return "an unknown codec" if context is None else str(context.codec.canonical_name)


def _declared_seconds(
    reader: av.container.InputContainer, stream: Any, container: str, data: bytes
) -> float | None:
    """The header's duration, or None for none or for FFmpeg's bitrate guess (MP3, no Xing)."""
    if container == MP3 and not any(tag in data[:16384] for tag in (b"Xing", b"Info", b"VBRI")):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if reader.duration:
        return float(reader.duration) / 1_000_000
    return None


def _demuxed_seconds(reader: av.container.InputContainer, stream: Any, max_seconds: float) -> float:
    """The packets' duration (or timestamp span), raising once past the limit in time or count."""
    time_base = float(stream.time_base or 0)
    if time_base <= 0:
        raise UnsupportedAudioFormat("The recording's stream has no time base.")
    max_packets = int(max_seconds * _MAX_PACKETS_PER_SECOND) + 1
    packets = total = 0
    first: int | None = None
    end = 0
    seconds = 0.0
    for packet in reader.demux(stream):
        if not packet.size:
            continue  # the demuxer's flush packet
        packets += 1
        duration = max(int(packet.duration or 0), 0)
        total += duration
        if packet.pts is not None:
            first = packet.pts if first is None else min(first, packet.pts)
            end = max(end, packet.pts + duration)
        seconds = max(total, end - (first or 0)) * time_base
        if seconds > max_seconds or packets > max_packets:
            raise AudioTooLong(f"The audio is longer than the limit of {max_seconds:g} seconds.")
    if packets == 0:
        raise EmptyAudio("The audio holds no samples.")
    if seconds <= 0:
        raise UnsupportedAudioFormat("The recording's packets carry no timing.")
    return seconds


def _cut_short(data: bytes, container: str) -> bool:
    """Whether the container's own structure runs past the end of the bytes: its units are
    stepped through (`_*_next` gives the next one's offset, or a verdict) up to `_MAX_ELEMENTS`."""
    if container == MP3:
        tag_end = _id3_end(data)
        return tag_end is not None and tag_end > len(data)
    step = {WEBM: _ebml_next, OGG: _ogg_next, MP4: _mp4_next, FLAC: _flac_next}[container]
    pos = 4 if container == FLAC else 0
    for _ in range(_MAX_ELEMENTS):
        if pos >= len(data):
            return container == FLAC  # frames follow FLAC's metadata
        following = step(data, pos)
        if isinstance(following, bool):
            return following
        if following > len(data):
            return True
        pos = following
    return False


def _ebml_vint(data: bytes, pos: int, *, marker: bool) -> tuple[int, int] | None:
    """(value, length) of the EBML varint at `pos`; None past the end, (-1, 1) for no marker."""
    if pos >= len(data):
        return None
    first = data[pos]
    if first == 0:
        return -1, 1
    length = 9 - first.bit_length()
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    return (value if marker else value & ((1 << (7 * length)) - 1)), length


def _ebml_next(data: bytes, pos: int) -> int | bool:
    """Past the WebM element at `pos`, or into it for Segment and unknown-size Clusters
    (MediaRecorder's); False for no element, or an unknown size elsewhere (PyAV judges)."""
    ident = _ebml_vint(data, pos, marker=True)
    size = None if ident is None else _ebml_vint(data, pos + ident[1], marker=False)
    if ident is None or size is None:
        return True
    if ident[0] < 0 or size[0] < 0:
        return False
    body = pos + ident[1] + size[1]
    unknown = size[0] == (1 << (7 * size[1])) - 1
    if not unknown and body + size[0] > len(data):
        return True
    if ident[0] == _EBML_SEGMENT or (ident[0] == _EBML_CLUSTER and unknown):
        return body
    return False if unknown else body + size[0]


def _ogg_next(data: bytes, pos: int) -> int | bool:
    """Past the Ogg page at `pos`: 27 header bytes, a segment table, then the segments."""
    if len(data) - pos < 27:
        return b"OggS".startswith(data[pos : pos + 4])
    if data[pos : pos + 4] != b"OggS":
        return False  # not a page here: PyAV judges
    segments = data[pos + 26]
    return pos + 27 + segments + sum(data[pos + 27 : pos + 27 + segments])


def _mp4_next(data: bytes, pos: int) -> int | bool:
    """Past the top-level MP4 box at `pos` (ftyp, moov, mdat, moof, ...), by its size."""
    if pos + 8 > len(data):
        return True
    (size,) = struct.unpack_from(">I", data, pos)
    if size == 1:  # a 64-bit size follows the type
        if pos + 16 > len(data):
            return True
        (size,) = struct.unpack_from(">Q", data, pos + 8)
        return pos + size if size >= 16 else False
    return pos + size if size >= 8 else False  # 0: the last box; else not a box: PyAV judges


def _flac_next(data: bytes, pos: int) -> int | bool:
    """Past FLAC's metadata block at `pos`; False after the one flagged last."""
    if pos + 4 > len(data):
        return True
    end = pos + 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
    return False if data[pos] & 0x80 and end <= len(data) else end
