"""The PyTorch engines on their real libraries: openai-whisper (with the converted packaged Whisper
base) and Coqui TTS (with a tiny VITS model made here, whose random weights speak noise).

They are an optional install; tests that need them are skipped without it.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from models.errors import EngineUnavailable, NoSpeech
from models.settings import Settings
from tests.conftest import ROOT, make_settings
from worker.engines import Audio, build_synthesizer
from worker.engines.coqui import CoquiSynthesizer
from worker.engines.openai_whisper import OpenAIWhisperTranscriber, packaged_checkpoint
from worker.engines.preflight import validate_engines
from worker.engines.whisper_convert import ConversionError, convert

INSTALL = (
    "the PyTorch engines are optional: pip install -r requirements-engines.txt "
    "&& pip install --no-deps -r requirements-engines-nodeps.txt"
)
QUESTION = "What is the capital of France, and why is it so famous?"


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, to compare two recognisers' transcripts."""
    return re.findall(r"[a-z0-9']+", text.lower())


@pytest.fixture(scope="module")
def question(speaker: Any, engine_settings: Settings) -> np.ndarray:
    """The test question said by Piper, as the 16 kHz float32 samples a transcriber takes."""
    audio = speaker.synthesize(QUESTION, voice=engine_settings.tts_voice)
    samples = audio.samples.astype(np.float32) / 32768
    return np.asarray(soxr.resample(samples, audio.sample_rate, 16_000), dtype=np.float32)


@pytest.fixture(scope="module")
def openai_whisper(engine_settings: Settings) -> OpenAIWhisperTranscriber:
    """openai-whisper with the packaged Whisper base, converted on first use."""
    pytest.importorskip("whisper", reason=INSTALL)
    settings = make_settings(
        engine_settings.data_dir, STT_ENGINE="openai-whisper", WHISPER_DEVICE="cpu"
    )
    return OpenAIWhisperTranscriber.from_settings(settings)


def test_the_converted_checkpoint_loads_in_openai_whisper(tmp_path: Path) -> None:
    whisper = pytest.importorskip("whisper", reason=INSTALL)
    from worker.engines.model_files import assemble_whisper_base

    ct2_dir = assemble_whisper_base(tmp_path / "ct2")
    out = tmp_path / "base.pt"
    done = subprocess.run(
        [sys.executable, "-m", "worker.engines.whisper_convert", str(ct2_dir), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    model = whisper.load_model(str(out), device="cpu")  # strict: every tensor named and shaped
    assert model.dims == whisper.model.ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=512,
        n_audio_head=8,
        n_audio_layer=6,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=512,
        n_text_head=8,
        n_text_layer=6,
    )
    assert model.is_multilingual
    assert not list(tmp_path.glob(".base.pt.*")), "the temporary file was left behind"


def test_openai_whisper_hears_the_words_faster_whisper_hears(
    openai_whisper: OpenAIWhisperTranscriber, question: np.ndarray, engine_settings: Settings
) -> None:
    from worker.engines.faster_whisper import FasterWhisperTranscriber

    expected = FasterWhisperTranscriber.from_settings(engine_settings).transcribe(question)
    transcript = openai_whisper.transcribe(question)
    assert words(transcript.text) == words(expected.text)
    assert {"capital", "france", "famous"} <= set(words(transcript.text))
    assert transcript.language == "en"
    assert transcript.duration == pytest.approx(len(question) / 16_000, abs=0.01)
    assert transcript.segments
    assert " ".join(s.text for s in transcript.segments) == transcript.text
    assert all(0 <= s.start < s.end <= transcript.duration + 0.5 for s in transcript.segments)
    assert transcript.seconds > 0


def test_openai_whisper_finds_no_speech_in_silence(
    openai_whisper: OpenAIWhisperTranscriber,
) -> None:
    with pytest.raises(NoSpeech):
        openai_whisper.transcribe(np.zeros(3 * 16_000, dtype=np.float32))


def test_a_missing_whisper_checkpoint_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, WHISPER_MODEL=str(tmp_path / "absent.pt"))
    with pytest.raises(EngineUnavailable, match="WHISPER_MODEL="):
        OpenAIWhisperTranscriber.from_settings(settings)


def test_an_unknown_whisper_model_name_names_the_setting(tmp_path: Path) -> None:
    pytest.importorskip("whisper", reason=INSTALL)
    settings = make_settings(tmp_path, WHISPER_MODEL="enormous.xx", WHISPER_DEVICE="cpu")
    with pytest.raises(EngineUnavailable, match=r"WHISPER_MODEL=enormous\.xx .*base\.en"):
        OpenAIWhisperTranscriber.from_settings(settings)


def test_the_converter_refuses_a_folder_without_a_whisper_model(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no model\.bin"):
        convert(tmp_path, tmp_path / "out.pt")
    (tmp_path / "model.bin").write_bytes(b"\x05\x00\x00\x00")
    with pytest.raises(ConversionError, match="binary version 5"):
        convert(tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_the_packaged_checkpoint_is_converted_once(
    openai_whisper: OpenAIWhisperTranscriber, engine_settings: Settings
) -> None:
    checkpoint = engine_settings.data_dir / "models" / "openai-whisper-base.pt"
    stamp = checkpoint.stat().st_mtime_ns
    assert packaged_checkpoint(engine_settings) == checkpoint
    assert checkpoint.stat().st_mtime_ns == stamp


# Coqui TTS


def make_tiny_vits(folder: Path, *, phonemes: bool) -> Path:
    """A VITS model with small dimensions and random weights: checkpoint and config.json.

    `length_scale` 3 makes each character last about three frames, so that `speed` has frames
    to take away. With `phonemes` its text goes through espeak-ng, as Coqui's released
    tts_models/en/ljspeech/vits does.
    """
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    args = VitsArgs(
        hidden_channels=16,
        hidden_channels_ffn_text_encoder=32,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        resblock_type_decoder="2",
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3]],
        upsample_rates_decoder=[8, 8, 4],  # their product is the hop length
        upsample_initial_channel_decoder=32,
        upsample_kernel_sizes_decoder=[16, 16, 8],
        use_sdp=False,
        init_discriminator=False,
        length_scale=3.0,
    )
    phoneme_options: dict[str, Any] = (
        {"phonemizer": "espeak", "phoneme_language": "en-us"} if phonemes else {}
    )
    config = VitsConfig(
        model_args=args,
        audio=BaseAudioConfig(sample_rate=22_050, hop_length=256, win_length=1024, fft_size=1024),
        text_cleaner="phoneme_cleaners" if phonemes else "english_cleaners",
        use_phonemes=phonemes,
        **phoneme_options,
    )
    torch.manual_seed(0)
    model = Vits(config)
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    config.save_json(str(folder / "config.json"))
    return folder


@pytest.fixture(scope="module")
def tiny_vits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VITS on characters (no phonemizer)."""
    pytest.importorskip("TTS.api", reason=INSTALL)
    return make_tiny_vits(tmp_path_factory.mktemp("vits"), phonemes=False)


@pytest.fixture(scope="module")
def coqui(tiny_vits: Path, tmp_path_factory: pytest.TempPathFactory) -> CoquiSynthesizer:
    settings = make_settings(
        tmp_path_factory.mktemp("coqui"),
        TTS_ENGINE="coqui",
        COQUI_MODEL_PATH=str(tiny_vits / "model.pth"),
        COQUI_CONFIG_PATH=str(tiny_vits / "config.json"),
        TTS_DEVICE="cpu",
    )
    synthesizer = build_synthesizer(settings)
    assert isinstance(synthesizer, CoquiSynthesizer)
    return synthesizer


def test_coqui_speaks_a_sentence_as_16_bit_mono(coqui: CoquiSynthesizer) -> None:
    text = "The capital of France is Paris."
    audio = coqui.synthesize(text, voice="en_US-joe-medium")
    assert isinstance(audio, Audio)
    assert audio.samples.dtype == np.int16 and audio.samples.ndim == 1
    assert audio.sample_rate == 22_050
    # At least a frame (256 samples) per character, and not minutes of it.
    assert len(text) * 256 / 22_050 < audio.duration < 30
    assert np.abs(audio.samples).max() > 0
    assert audio.seconds > 0
    samples, rate = sf.read(io.BytesIO(audio.to_wav()), dtype="int16")
    info = sf.info(io.BytesIO(audio.to_wav()))
    assert (rate, info.channels, info.subtype) == (22_050, 1, "PCM_16")
    np.testing.assert_array_equal(samples, audio.samples)


def test_coqui_speed_shortens_the_speech(coqui: CoquiSynthesizer) -> None:
    text = "The capital of France is Paris, and it is famous for its museums."
    normal = coqui.synthesize(text, voice="en_US-joe-medium")
    fast = coqui.synthesize(text, voice="en_US-joe-medium", speed=2.0)
    slow = coqui.synthesize(text, voice="en_US-joe-medium", speed=0.5)
    assert fast.duration < 0.8 * normal.duration < 0.8 * slow.duration
    assert coqui.synthesize(text, voice="x").duration == normal.duration  # speed was restored


def test_coqui_resamples_to_a_requested_rate(tiny_vits: Path) -> None:
    synthesizer = CoquiSynthesizer(
        model_path=str(tiny_vits / "model.pth"), device="cpu", sample_rate=16_000
    )  # config.json is found beside the checkpoint
    audio = synthesizer.synthesize("Paris.", voice="any")
    assert audio.sample_rate == 16_000
    assert audio.samples.dtype == np.int16 and audio.duration > 0


def test_coqui_without_a_model_names_the_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, TTS_ENGINE="coqui")
    with pytest.raises(EngineUnavailable, match=r"COQUI_MODEL .*COQUI_MODEL_PATH"):
        CoquiSynthesizer.from_settings(settings)


def test_coqui_with_a_missing_checkpoint_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, COQUI_MODEL_PATH=str(tmp_path / "absent.pth"))
    with pytest.raises(EngineUnavailable, match="COQUI_MODEL_PATH="):
        CoquiSynthesizer.from_settings(settings)


NO_ESPEAK = "espeak-ng is not installed here (apt-get install espeak-ng; .ci/run installs it)"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason=NO_ESPEAK)
def test_coqui_speaks_a_phoneme_voice_through_espeak_ng(tmp_path: Path) -> None:
    pytest.importorskip("TTS.api", reason=INSTALL)
    folder = make_tiny_vits(tmp_path, phonemes=True)
    settings = make_settings(
        tmp_path,
        TTS_ENGINE="coqui",
        COQUI_MODEL_PATH=str(folder / "model.pth"),
        COQUI_CONFIG_PATH=str(folder / "config.json"),
        TTS_DEVICE="cpu",
    )
    validate_engines(settings)  # espeak-ng is found: no problem reported
    synthesizer = build_synthesizer(settings)
    assert isinstance(synthesizer, CoquiSynthesizer)
    tokenizer = synthesizer.tts.synthesizer.tts_model.tokenizer
    assert tokenizer.use_phonemes and tokenizer.phonemizer.name() == "espeak"
    stress = "\u02c8"  # IPA primary stress: espeak-ng marks it, plain characters never do
    assert stress in tokenizer.phonemizer.phonemize("Paris", separator="")
    audio = synthesizer.synthesize("The capital of France is Paris.", voice="any")
    assert audio.samples.dtype == np.int16 and audio.duration > 0
    assert np.abs(audio.samples).max() > 0


def test_without_espeak_the_start_up_check_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("TTS.api", reason=INSTALL)
    folder = make_tiny_vits(tmp_path, phonemes=True)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))  # neither espeak-ng nor espeak
    by_path = make_settings(
        tmp_path, TTS_ENGINE="coqui", COQUI_MODEL_PATH=str(folder / "model.pth")
    )
    with pytest.raises(EngineUnavailable, match="espeak-ng is not installed") as error:
        validate_engines(by_path)
    assert str(folder / "config.json") in str(error.value)
    by_name = make_settings(tmp_path, TTS_ENGINE="coqui", COQUI_MODEL="tts_models/en/ljspeech/vits")
    with pytest.raises(EngineUnavailable, match="COQUI_MODEL=tts_models/en/ljspeech/vits speaks"):
        validate_engines(by_name)
    characters = tmp_path / "characters"
    characters.mkdir()
    make_tiny_vits(characters, phonemes=False)
    validate_engines(  # a voice on characters needs no espeak
        make_settings(tmp_path, TTS_ENGINE="coqui", COQUI_MODEL_PATH=str(characters / "model.pth"))
    )
