"""The WAV validator and the normaliser, on WAVs made in every encoding soundfile writes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import errors
from models.audio import inspect_wav, load_for_transcription
from tests.conftest import tone, wav_bytes

LIMIT = 600.0


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2])
def test_accepts_every_pcm_and_float_encoding(subtype: str, channels: int) -> None:
    data = wav_bytes(tone(1.5, 44_100, channels), 44_100, subtype=subtype)
    info = inspect_wav(data, LIMIT)
    assert info.sample_rate == 44_100
    assert info.channels == channels
    assert info.subtype == subtype
    assert info.seconds == pytest.approx(1.5)


@pytest.mark.parametrize("sample_rate", [8_000, 11_025, 16_000, 22_050, 48_000, 96_000])
def test_accepts_any_sample_rate(sample_rate: int) -> None:
    info = inspect_wav(wav_bytes(tone(0.5, sample_rate), sample_rate), LIMIT)
    assert info.seconds == pytest.approx(0.5, abs=1e-3)


def test_accepts_wave_format_extensible() -> None:
    data = wav_bytes(tone(1.0, 16_000, 2), 16_000, subtype="PCM_24", fmt="WAVEX")
    assert struct.unpack_from("<H", data, 20)[0] == 0xFFFE
    assert inspect_wav(data, LIMIT).frames == 16_000


def test_rejects_zero_bytes() -> None:
    with pytest.raises(errors.EmptyAudio):
        inspect_wav(b"", LIMIT)


def test_rejects_a_wav_without_samples() -> None:
    with pytest.raises(errors.EmptyAudio):
        inspect_wav(wav_bytes(np.zeros((0, 1), np.float32), 16_000), LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 200,  # MP3
        b"OggS" + b"\x00" * 200,
        b"fLaC" + b"\x00" * 200,
        b"hello, this is plainly text and not audio",
        b"RIFF\x10\x00\x00\x00AVI LIST",  # RIFF, but not WAVE
    ],
    ids=["mp3", "ogg", "flac", "text", "avi"],
)
def test_rejects_what_is_not_a_wav_whatever_its_label(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedAudioFormat):
        inspect_wav(data, LIMIT)


def test_rejects_a_truncated_wav() -> None:
    data = wav_bytes(tone(2.0), 16_000)
    with pytest.raises(errors.TruncatedAudio):
        inspect_wav(data[: len(data) // 2], LIMIT)


def test_a_header_claiming_hours_is_measured_by_its_bytes() -> None:
    header = bytearray(wav_bytes(tone(0.01), 16_000)[:44])
    struct.pack_into("<I", header, 40, 16_000 * 2 * 3600 * 5)  # five hours declared
    with pytest.raises(errors.TruncatedAudio):
        inspect_wav(bytes(header) + b"\x00" * 64, LIMIT)


def test_unknown_length_from_a_streaming_writer_is_measured_by_its_bytes() -> None:
    data = bytearray(wav_bytes(tone(1.0), 16_000))
    struct.pack_into("<I", data, 40, 0xFFFFFFFF)
    assert inspect_wav(bytes(data), LIMIT).seconds == pytest.approx(1.0)


def test_rejects_a_corrupt_wav() -> None:
    with pytest.raises(errors.InvalidAudio):
        inspect_wav(b"RIFF\x24\x00\x00\x00WAVEjunk\x04\x00\x00\x00abcd", LIMIT)


def test_rejects_an_encoding_it_cannot_decode() -> None:
    data = bytearray(wav_bytes(tone(1.0), 16_000))
    struct.pack_into("<H", data, 20, 0x0055)  # WAVE_FORMAT_MPEGLAYER3
    with pytest.raises(errors.UnsupportedAudioEncoding):
        inspect_wav(bytes(data), LIMIT)


def test_rejects_audio_over_the_duration_limit() -> None:
    with pytest.raises(errors.AudioTooLong):
        inspect_wav(wav_bytes(tone(3.0, 8_000), 8_000), max_seconds=2.0)


def test_normalises_to_16k_mono(tmp_path: object) -> None:
    path = f"{tmp_path}/in.wav"
    stereo = tone(2.0, 48_000, 2)
    sf.write(path, stereo, 48_000, subtype="FLOAT")
    samples = load_for_transcription(path)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert len(samples) == pytest.approx(32_000, abs=2)
    assert 0.15 < float(np.sqrt(np.mean(samples**2))) < 0.25  # the tone survives resampling


def _with_header_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


@pytest.mark.parametrize("channels", [3, 6])
def test_refuses_more_channels_than_allowed(channels: int) -> None:
    with pytest.raises(errors.UnsupportedChannelCount):
        inspect_wav(wav_bytes(tone(0.2, 16_000, channels), 16_000), LIMIT)


def test_more_channels_when_allowed_are_mixed_down(tmp_path: Path) -> None:
    data = wav_bytes(tone(0.5, 16_000, 6), 16_000)
    assert inspect_wav(data, LIMIT, max_channels=8).channels == 6
    path = tmp_path / "six.wav"
    path.write_bytes(data)
    assert load_for_transcription(str(path)).ndim == 1


def test_a_header_claiming_1024_channels_is_refused_before_decoding() -> None:
    # Channels are a 16-bit field at byte 22 of the canonical header: nothing is decoded.
    header = _with_header_field(wav_bytes(tone(0.5, 16_000), 16_000), 22, "<H", 1024)
    with pytest.raises(errors.UnsupportedChannelCount):
        inspect_wav(header, LIMIT)


@pytest.mark.parametrize("sample_rate", [1, 4_000, 7_999, 192_001, 2**31 - 1])
def test_refuses_sample_rates_outside_8_to_192_khz(sample_rate: int) -> None:
    data = _with_header_field(wav_bytes(tone(0.2, 16_000), 16_000), 24, "<I", sample_rate)
    with pytest.raises(errors.UnsupportedSampleRate):
        inspect_wav(data, LIMIT)


@pytest.mark.parametrize("sample_rate", [8_000, 192_000])
def test_accepts_the_edges_of_the_sample_rates(sample_rate: int) -> None:
    assert inspect_wav(wav_bytes(tone(0.2, sample_rate), sample_rate), LIMIT).frames > 0


def _with_junk_chunks(count: int) -> bytes:
    data = wav_bytes(tone(0.2, 16_000), 16_000)
    junk = b"JUNK\x02\x00\x00\x00\x00\x00" * count
    body = data[12:36] + junk + data[36:]  # fmt, the junk, then data
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body


def test_a_few_extra_chunks_are_read_past() -> None:
    assert inspect_wav(_with_junk_chunks(20), LIMIT).frames == 3_200


def test_a_walk_through_endless_chunks_is_cut_short() -> None:
    with pytest.raises(errors.TooManyChunks):
        inspect_wav(_with_junk_chunks(100_000), LIMIT)
