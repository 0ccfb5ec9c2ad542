"""Text to speech with Coqui TTS (PyTorch): a released model by name, or a checkpoint."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import EngineUnavailable
from models.settings import Settings
from worker.engines import Audio
from worker.engines.model_files import coqui_config
from worker.engines.openai_whisper import torch_device

_LOGGER = logging.getLogger(__name__)

NOTHING_CONFIGURED = (
    "TTS_ENGINE=coqui needs COQUI_MODEL (a Coqui model name) or COQUI_MODEL_PATH "
    "(a checkpoint, with COQUI_CONFIG_PATH or a config.json beside it)."
)


class CoquiSynthesizer:
    """One loaded Coqui model; `synthesize` is not thread-safe, one job at a time."""

    def __init__(
        self,
        *,
        model_name: str = "",
        model_path: str = "",
        config_path: str = "",
        device: str = "auto",
        speaker: str = "",
        language: str = "",
        sample_rate: int | None = None,
    ) -> None:
        """Loads a released model by name or a checkpoint; empty `speaker`/`language`: the
        model's first / "en"; `sample_rate` None: the model's."""
        tts, source = _load(model_name, model_path, config_path)
        device = torch_device("TTS_DEVICE", device)
        self.tts: Any = tts.to(device)
        self.speakers: list[str] = list(tts.speakers or []) if tts.is_multi_speaker else []
        self.speaker = self._choose("TTS_SPEAKER", speaker, self.speakers, source)
        languages = list(tts.languages or []) if tts.is_multi_lingual else []
        self.language = self._choose("TTS_LANGUAGE", language or "en", languages, source)
        self.model_rate = int(tts.synthesizer.output_sample_rate)
        self.sample_rate = sample_rate or self.model_rate
        _LOGGER.info(
            "coqui model loaded source=%s device=%s speaker=%s language=%s sample_rate=%s",
            source,
            device,
            self.speaker,
            self.language,
            self.model_rate,
        )

    @staticmethod
    def _choose(setting: str, wanted: str, available: list[str], source: str) -> str | None:
        """The speaker or language to pass: None where the model has no choice of them."""
        if not available:
            return None
        if wanted in available:
            return wanted
        if setting == "TTS_SPEAKER" and not wanted:
            return available[0]
        raise EngineUnavailable(
            f"{setting}={wanted!r} is not offered by {source}; choose one of "
            f"{', '.join(available[:20])}{', ...' if len(available) > 20 else ''}."
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CoquiSynthesizer:
        """Loads `COQUI_MODEL`, or `COQUI_MODEL_PATH` with `COQUI_CONFIG_PATH`, on `TTS_DEVICE`."""
        return cls(
            model_name=settings.coqui_model,
            model_path=settings.coqui_model_path,
            config_path=settings.coqui_config_path,
            device=settings.tts_device,
            speaker=settings.tts_speaker,
            language=settings.tts_language,
        )

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        """Speaks `text`; `voice` picks the speaker of a multi-speaker model when it names one,
        and `speed` is VITS's `length_scale` or XTTS's `speed` (else the model's own pace)."""
        started = time.perf_counter()
        speaker = voice if voice in self.speakers else self.speaker
        model = self.tts.synthesizer.tts_model
        options: dict[str, Any] = {}
        length_scale = getattr(model, "length_scale", None)
        if speed != 1.0:
            if isinstance(length_scale, int | float):
                model.length_scale = length_scale / speed
            elif "speed" in inspect.signature(model.inference).parameters:
                options["speed"] = speed
            else:
                _LOGGER.warning("coqui model cannot change speed, speaking at its own pace")
        try:
            wav = self.tts.tts(text, speaker=speaker, language=self.language, **options)
        finally:
            if isinstance(length_scale, int | float):
                model.length_scale = length_scale
        samples = np.asarray(wav, dtype=np.float32).reshape(-1)
        if self.sample_rate != self.model_rate:
            import soxr

            samples = soxr.resample(samples, self.model_rate, self.sample_rate)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
        return Audio(
            samples=pcm,
            sample_rate=self.sample_rate,
            seconds=round(time.perf_counter() - started, 3),
        )


def _load(model_name: str, model_path: str, config_path: str) -> tuple[Any, str]:
    """Loads a Coqui model by name or a checkpoint; returns it and the setting that named it."""
    if not model_name and not model_path:
        raise EngineUnavailable(NOTHING_CONFIGURED)
    checkpoint = Path(model_path).expanduser()
    config = coqui_config(model_path, config_path)
    if not model_name:
        for setting, path in (("COQUI_MODEL_PATH", checkpoint), ("COQUI_CONFIG_PATH", config)):
            if not path.exists():
                raise EngineUnavailable(f"{setting}={path} does not exist.")
    from TTS.api import TTS

    source = f"COQUI_MODEL={model_name}" if model_name else f"COQUI_MODEL_PATH={checkpoint}"
    try:
        if model_name:  # fetched into Coqui's cache on first use, on a connected machine
            tts = TTS(model_name=model_name, progress_bar=False)
        else:
            tts = TTS(model_path=str(checkpoint), config_path=str(config), progress_bar=False)
    # An unknown name is a KeyError, no network an OSError, a checkpoint that does not fit
    # its config a RuntimeError.
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise EngineUnavailable(f"{source} cannot be loaded: {error!r}") from error
    return tts, source
