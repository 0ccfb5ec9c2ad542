"""Browser and OpenAI-client recordings (WebM/Opus, Ogg/Opus, MP3, M4A/AAC, FLAC): recognised by
their bytes, measured at the edge without decoding, decoded to 16 kHz mono by the worker.

Every file is made here with PyAV's own encoders from the spoken test question, but one:
tests/data/question-chromium.webm is the question as Chromium 156's MediaRecorder recorded it
(`audio/webm;codecs=opus`, `start(250)`, echo cancellation, noise suppression and gain control
off) from a fake microphone fed the question WAV padded with silence
(`--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=...`): the very bytes a
browser page sends, with no duration in its header and a Segment and Clusters of unknown size.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf

from models import audio_containers, errors, storage
from models.audio import inspect_upload, load_for_transcription
from models.settings import Settings
from tests.conftest import Service, make_settings, tone, wav_bytes
from tests.recordings import CONTAINERS, FORMATS, encode, pcm_in_matroska, remuxed, video_only

CHROMIUM_WEBM = Path(__file__).parents[1] / "data" / "question-chromium.webm"
# An EBML Segment whose size says "unknown", as a recorder that cannot seek back writes it.
UNKNOWN_SEGMENT = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"
KINDS = list(FORMATS)
# Every code an undecodable (415) or unacceptable (422) recording may be answered with.
REFUSALS = {
    415: {"unsupported_audio_format", "no_audio_stream", "unsupported_audio_codec"},
    422: {"audio_truncated", "empty_audio", "audio_too_long", "invalid_audio"},
}


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def question_seconds(question_wav: bytes) -> float:
    return float(sf.info(io.BytesIO(question_wav)).duration)


@pytest.fixture(scope="module")
def encoded(question_wav: bytes) -> dict[str, bytes]:
    """The spoken question in every format."""
    return {kind: encode(question_wav, kind) for kind in KINDS}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _random(size: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# Recognition, measurement and decoding ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_is_named_by_its_bytes(encoded: dict[str, bytes], kind: str) -> None:
    assert audio_containers.sniff(encoded[kind]) == CONTAINERS[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_is_measured_without_decoding(
    encoded: dict[str, bytes], limits: Settings, question_seconds: float, kind: str
) -> None:
    info = inspect_upload(encoded[kind], limits)
    assert info.container == CONTAINERS[kind]
    assert info.extension == kind
    assert info.subtype == {"webm": "opus", "ogg": "opus", "m4a": "aac"}.get(kind, kind)
    assert info.channels == 1
    # Codec delay and padding: an encoder adds a frame or two of samples.
    assert info.seconds == pytest.approx(question_seconds, abs=0.12)


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_decodes_to_16k_mono(
    encoded: dict[str, bytes], question_wav: bytes, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"question.{kind}"
    path.write_bytes(encoded[kind])
    samples = load_for_transcription(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    original, rate = sf.read(io.BytesIO(question_wav), dtype="float32")
    assert len(samples) / 16_000 == pytest.approx(len(original) / rate, abs=0.12)
    loudness = float(np.sqrt(np.mean(samples**2)))
    assert loudness == pytest.approx(float(np.sqrt(np.mean(original**2))), rel=0.3)


def test_the_webm_here_has_no_duration_as_mediarecorders_has_none(
    encoded: dict[str, bytes],
) -> None:
    for data in (encoded["webm"], CHROMIUM_WEBM.read_bytes()):
        assert UNKNOWN_SEGMENT in data[:64]
        with av.open(io.BytesIO(data)) as reader:
            assert reader.duration is None


def test_chromiums_mediarecorder_webm_is_measured_and_decoded(limits: Settings) -> None:
    info = inspect_upload(CHROMIUM_WEBM.read_bytes(), limits)
    assert (info.container, info.subtype, info.sample_rate) == ("webm", "opus", 48_000)
    assert info.seconds == pytest.approx(2.58, abs=0.1)
    assert len(load_for_transcription(CHROMIUM_WEBM)) == pytest.approx(2.58 * 16_000, abs=1600)


def test_a_wav_keeps_its_own_path(limits: Settings) -> None:
    info = inspect_upload(wav_bytes(tone(1.0), 16_000), limits)
    assert (info.container, info.extension, info.subtype) == ("wav", "wav", "PCM_16")


def test_stored_names_are_the_jobs_with_the_containers_extension() -> None:
    assert storage.upload_name("abc123", "webm") == "abc123.webm"
    assert storage.job_id_of("abc123.m4a") == "abc123"  # retention finds its job
    for extension in ("../wav", "", "w.av"):
        with pytest.raises(ValueError):
            storage.upload_name("abc123", extension)


# Refusals at the edge ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_file_of_each_format(
    encoded: dict[str, bytes], limits: Settings, kind: str
) -> None:
    data = encoded[kind]
    for cut in (0.6, 0.8):
        with pytest.raises(errors.TruncatedAudio):
            inspect_upload(data[: int(len(data) * cut)], limits)


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_then_garbage_is_refused(
    encoded: dict[str, bytes], limits: Settings, kind: str
) -> None:
    data = encoded[kind]
    for keep in (64, len(data) // 10):
        with pytest.raises((errors.UnsupportedAudioFormat, errors.InvalidAudio)):
            inspect_upload(data[:keep] + _random(len(data) - keep), limits)


def test_random_bytes_are_no_format(limits: Settings) -> None:
    for seed in range(20):
        with pytest.raises(errors.UnsupportedAudioFormat):
            inspect_upload(_random(4096, seed), limits)


def test_an_over_long_recording_is_refused_from_its_header_before_any_packet(
    limits: Settings,
) -> None:
    # A FLAC whose STREAMINFO declares eleven minutes but holds one second: refused on the
    # header's word, before a packet is read.
    data = bytearray(encode(wav_bytes(tone(1.0, 22_050), 22_050), "flac"))
    total = 11 * 60 * 22_050
    data[21] = (data[21] & 0xF0) | (total >> 32)
    data[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(errors.AudioTooLong, match="header says 660"):
        inspect_upload(bytes(data), limits)


def test_an_over_long_recording_without_a_duration_is_counted_by_its_packets(
    limits: Settings,
) -> None:
    """Eleven minutes of MediaRecorder-like WebM (no duration anywhere): its packets are
    counted, not decoded, and counting stops at the limit; decoding them would take seconds."""
    long = remuxed(CHROMIUM_WEBM.read_bytes(), 660)
    started = time.process_time()
    with pytest.raises(errors.AudioTooLong):
        inspect_upload(long, limits)
    assert time.process_time() - started < 0.5


def test_a_file_with_only_video_has_no_audio_stream(limits: Settings) -> None:
    with pytest.raises(errors.NoAudioStream):
        inspect_upload(video_only(), limits)


def test_a_codec_we_do_not_take(limits: Settings) -> None:
    with pytest.raises(errors.UnsupportedAudioCodec):
        inspect_upload(pcm_in_matroska(), limits)


def test_a_recording_the_worker_cannot_decode_is_invalid(tmp_path: Path, limits: Settings) -> None:
    """FLAC packets of random bytes in a WebM: well formed to the edge (it only demuxes), and
    refused by the decoder in the worker."""
    data = remuxed(encode(wav_bytes(tone(1.0, 22_050), 22_050), "flac"), 2.0, garbage=True)
    assert inspect_upload(data, limits).subtype == "flac"
    path = tmp_path / "garbage.webm"
    path.write_bytes(data)
    with pytest.raises(errors.InvalidAudio):
        load_for_transcription(path)


# Through the Flask app ----------------------------------------------------------------------


def _expect(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    code = str(response.get_json()["code"])
    assert code in REFUSALS[status], code
    return code


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_is_accepted_raw_and_as_a_part_under_a_name_of_ours(
    open_client_with: Any, encoded: dict[str, bytes], tmp_path: Path, kind: str
) -> None:
    client = open_client_with()
    # Labels that lie: the bytes decide.
    raw = client.post(
        "/v1/jobs", data=encoded[kind], headers={"Content-Type": "audio/mpeg"}, query_string={}
    )
    part = client.post(
        "/v1/jobs",
        data={"audio": (io.BytesIO(encoded[kind]), "../../etc/passwd.wav", "text/plain")},
        content_type="multipart/form-data",
    )
    for response in (raw, part):
        assert response.status_code == 202, response.get_data(as_text=True)
        job = response.get_json()
        assert job["input"]["kind"] == "audio" and job["input"]["audio_seconds"] > 1
        stored = tmp_path / "uploads" / f"{job['id']}.{kind}"
        assert stored.read_bytes() == encoded[kind]
    assert sorted(p.suffix for p in (tmp_path / "uploads").iterdir()) == [f".{kind}"] * 2


def test_the_chromium_recording_is_accepted_with_its_own_label(open_client_with: Any) -> None:
    response = open_client_with().post(
        "/v1/jobs",
        data=CHROMIUM_WEBM.read_bytes(),
        headers={"Content-Type": "audio/webm;codecs=opus"},
        query_string={"reply": "voice"},
    )
    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_and_garbled_files_over_http(
    open_client_with: Any, encoded: dict[str, bytes], kind: str
) -> None:
    client = open_client_with()
    data = encoded[kind]
    truncated = client.post(
        "/v1/jobs", data=data[: len(data) * 6 // 10], headers={"Content-Type": "audio/ogg"}
    )
    assert _expect(truncated, 422) == "audio_truncated"
    garbled = data[:64] + _random(len(data) - 64)
    response = client.post(
        "/v1/jobs",
        data={"audio": (io.BytesIO(garbled), "a.bin")},
        content_type="multipart/form-data",
    )
    assert response.status_code in (415, 422)
    _expect(response, response.status_code)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: _random(10_000), 415, "unsupported_audio_format"),
        (lambda: b"hello", 415, "unsupported_audio_format"),
        (video_only, 415, "no_audio_stream"),
        (pcm_in_matroska, 415, "unsupported_audio_codec"),
        (lambda: remuxed(CHROMIUM_WEBM.read_bytes(), 660), 422, "audio_too_long"),
    ],
    ids=["random bytes", "text", "video only", "pcm in matroska", "eleven minutes"],
)
def test_refusals_over_http(open_client_with: Any, make: Any, status: int, code: str) -> None:
    client = open_client_with()
    data = make()
    raw = client.post("/v1/jobs", data=data, headers={"Content-Type": "audio/mpeg"})
    assert _expect(raw, status) == code
    transcription = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "file": (io.BytesIO(data), "speech.m4a")},
        content_type="multipart/form-data",
    )
    assert transcription.status_code == status
    assert transcription.get_json()["error"]["code"] == code


def test_a_truncated_m4a_on_the_openai_route(
    open_client_with: Any, encoded: dict[str, bytes]
) -> None:
    data = encoded["m4a"]
    response = open_client_with().post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "file": (io.BytesIO(data[: len(data) // 2]), "a.m4a")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "audio_truncated"


def test_an_audio_type_not_taken_is_refused_by_its_label(open_client_with: Any) -> None:
    response = open_client_with().post(
        "/v1/jobs", data=b"FORM", headers={"Content-Type": "audio/x-aiff"}
    )
    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"


# End to end, with the real engines ------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["webm", "mp3"])
def test_voice_to_text_from_a_compressed_question(
    service: Service, encoded: dict[str, bytes], kind: str
) -> None:
    submitted = service.submit(
        files={"audio": (f"question.{kind}", encoded[kind], "application/octet-stream")},
        data={"reply": "text", "max_tokens": "20"},
    )
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert {"capital", "france"} <= _words(job["result"]["transcript"])


@pytest.mark.e2e
def test_voice_to_text_from_chromiums_recording(service: Service) -> None:
    submitted = service.submit(
        data=CHROMIUM_WEBM.read_bytes(),
        headers={"Content-Type": "audio/webm;codecs=opus"},
        params={"reply": "text", "max_tokens": "20"},
    )
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job
    assert {"capital", "france"} <= _words(job["result"]["transcript"])


@pytest.mark.e2e
def test_openai_transcription_of_an_m4a(service: Service, encoded: dict[str, bytes]) -> None:
    response = service.http.post(
        f"{service.url}/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "json"},
        files={"file": ("speech.m4a", encoded["m4a"], "audio/mp4")},
        timeout=240,
    )
    assert response.status_code == 200, response.text
    assert {"capital", "france"} <= _words(response.json()["text"])


@pytest.mark.e2e
def test_a_recording_the_worker_cannot_decode_fails_its_job(service: Service) -> None:
    data = remuxed(encode(wav_bytes(tone(1.0, 22_050), 22_050), "flac"), 2.0, garbage=True)
    submitted = service.submit(data=data, headers={"Content-Type": "audio/webm"})
    job = service.wait(submitted["id"])
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "invalid_audio"
