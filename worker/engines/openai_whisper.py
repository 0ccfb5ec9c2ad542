"""Speech to text with openai-whisper (PyTorch), for GPUs that CTranslate2 has no build for."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import EngineUnavailable
from models.settings import Settings
from worker.engines import LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD, Transcript, heard
from worker.engines.model_files import assemble_whisper_base
from worker.engines.preflight import _looks_like_path  # the rule checked at start-up

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Beam search as faster-whisper does, on GPUs only: openai-whisper's beam search is about five
# times the cost of greedy decoding on a CPU (Whisper base, one thread: 15.4 s against 2.7 s for
# 17 s of speech, 3.7 s against 1.2 s for a 3.3 s question) for the same words there.
GPU_BEAM_SIZE = 5
PACKAGED_CHECKPOINT = "openai-whisper-base.pt"


def torch_device(setting: str, value: str) -> str:
    """Resolves a device setting ("auto": CUDA if torch sees it); EngineUnavailable without CUDA."""
    import torch

    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailable(f"{setting}={value}, but torch sees no CUDA device.")
    return value


def packaged_checkpoint(settings: Settings) -> Path:
    """The packaged Whisper base as an openai-whisper checkpoint, converted once (workers starting
    together each write a whole file under a temporary name; the last rename wins)."""
    from worker.engines.whisper_convert import ConversionError, convert

    models_dir = settings.data_dir / "models"
    checkpoint = models_dir / PACKAGED_CHECKPOINT
    if checkpoint.is_file():
        return checkpoint
    # The same folder faster-whisper uses, so both engines share one copy of the weights.
    source = assemble_whisper_base(models_dir / "faster-whisper-base")
    try:
        return convert(source, checkpoint)
    except ConversionError as error:
        raise EngineUnavailable(f"WHISPER_MODEL is unset and {error}") from error


class OpenAIWhisperTranscriber:
    """A loaded openai-whisper model; `transcribe` is not thread-safe, one job at a time."""

    def __init__(
        self, model: str, *, device: str, language: str | None, threads: int | None = None
    ) -> None:
        """Loads `model`: an official name in openai-whisper's cache, or a .pt checkpoint."""
        import torch
        import whisper

        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        if model in whisper.available_models():
            cache = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
            if not any(cache.glob(f"{model}.pt")):
                _LOGGER.info("whisper model name=%s not in cache=%s, downloading", model, cache)
        elif not Path(model).expanduser().is_file():
            raise EngineUnavailable(
                f"WHISPER_MODEL={model} is neither an openai-whisper model name "
                f"({', '.join(whisper.available_models())}) nor an existing checkpoint file."
            )
        try:
            self.model = whisper.load_model(str(Path(model).expanduser()), device=device)
        except (OSError, RuntimeError) as error:  # no network for a download, a corrupt file
            raise EngineUnavailable(f"WHISPER_MODEL={model} cannot be loaded: {error}") from error
        self.device = device
        self.language = language
        self.beam_size = GPU_BEAM_SIZE if device.startswith("cuda") else None  # None: greedy

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIWhisperTranscriber:
        """Loads `WHISPER_MODEL` on `WHISPER_DEVICE`, or the packaged Whisper base converted."""
        model = settings.whisper_model
        if _looks_like_path(model) and not Path(model).expanduser().is_file():
            raise EngineUnavailable(f"WHISPER_MODEL={model} is not an existing file.")
        device = torch_device("WHISPER_DEVICE", settings.whisper_device)
        model = model or str(packaged_checkpoint(settings))
        language = None if settings.whisper_language == "auto" else settings.whisper_language
        return cls(model, device=device, language=language, threads=settings.llm_threads)

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        """Transcribes 16 kHz mono float32; NoSpeech when every segment looks silent to Whisper."""
        started = time.perf_counter()
        result: dict[str, Any] = self.model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=language or self.language,
            task="transcribe",
            initial_prompt=prompt,
            beam_size=self.beam_size,
            condition_on_previous_text=False,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            logprob_threshold=LOGPROB_THRESHOLD,
            fp16=self.device.startswith("cuda"),  # half precision is slow or absent on CPUs
            verbose=None,
        )
        return heard(
            (
                (s["start"], s["end"], s["text"], s["no_speech_prob"], s["avg_logprob"])
                for s in result["segments"]
            ),
            language=result.get("language"),
            started=started,
            duration=len(audio) / SAMPLE_RATE,
        )
