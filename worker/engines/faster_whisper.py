"""Speech to text with faster-whisper (CTranslate2), the CPU default."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import EngineUnavailable
from models.settings import Settings
from worker.engines import Transcript, heard
from worker.engines.model_files import assemble_whisper_base

# Chosen by bench/ears.py (bench/results.md): beam 1 saves 7% of the CPU but mishears more;
# without_timestamps saves 2% but would merge the srt/vtt/verbose_json segments.
DECODING: dict[str, Any] = {"beam_size": 5, "vad_filter": True, "without_timestamps": False}


class FasterWhisperTranscriber:
    """A loaded faster-whisper model; `transcribe` is not thread-safe, one job at a time."""

    def __init__(self, model_dir: Path, *, threads: int, language: str | None) -> None:
        # Never let a missing file turn into a download attempt.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        if not (model_dir / "model.bin").is_file():
            raise EngineUnavailable(f"WHISPER_MODEL_DIR={model_dir} holds no model.bin.")
        self.language = language
        self.options = dict(DECODING)  # bench/ears.py sets its own
        self.model = WhisperModel(
            str(model_dir),  # always a folder: a name would be looked up on a model hub
            device="auto",
            # The fastest type the device supports: int8 on CPUs, float16 on CUDA GPUs.
            compute_type="auto",
            cpu_threads=threads,
            local_files_only=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> FasterWhisperTranscriber:
        """Loads the model from `WHISPER_MODEL_DIR`, or the packaged Whisper base."""
        if settings.whisper_model_dir:
            model_dir = Path(settings.whisper_model_dir)
        else:
            model_dir = assemble_whisper_base(settings.data_dir / "models" / "faster-whisper-base")
        # "auto" detects the language per recording, at the cost of an extra encoder pass
        # (about a second for Whisper base on two cores: bench/stages.py).
        language = None if settings.whisper_language == "auto" else settings.whisper_language
        return cls(model_dir, threads=settings.llm_threads, language=language)

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        """Transcribes 16 kHz mono float32; NoSpeech when VAD or Whisper hear only silence."""
        started = time.perf_counter()
        segments, info = self.model.transcribe(
            audio,
            language=language or self.language,
            initial_prompt=prompt,
            condition_on_previous_text=False,
            **self.options,
        )
        return heard(
            ((s.start, s.end, s.text, s.no_speech_prob, s.avg_logprob) for s in segments),
            language=info.language,
            started=started,
            duration=info.duration,
        )
