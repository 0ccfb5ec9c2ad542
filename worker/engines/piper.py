"""Text to speech with Piper (ONNX voices), the CPU default."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from models.errors import EngineUnavailable
from models.settings import Settings
from worker.engines import Audio
from worker.engines.model_files import piper_voice_path

PACKAGED_VOICE = "en_US-joe-medium"


class PiperSynthesizer:
    """Every configured Piper voice, loaded once."""

    def __init__(self, voice_paths: dict[str, Path]) -> None:
        from piper import PiperVoice

        self.voices = {}
        for name, path in voice_paths.items():
            if not path.is_file() or not Path(f"{path}.json").is_file():
                raise EngineUnavailable(
                    f"Piper voice {name!r} needs {path} and {path}.json (PIPER_VOICE_DIR)."
                )
            self.voices[name] = PiperVoice.load(path)

    @classmethod
    def from_settings(cls, settings: Settings) -> PiperSynthesizer:
        """Loads each voice in `TTS_VOICES` from `PIPER_VOICE_DIR`, or the packaged voice."""
        paths = {}
        for name in settings.tts_voices:
            if settings.piper_voice_dir:
                paths[name] = Path(settings.piper_voice_dir) / f"{name}.onnx"
            elif name == PACKAGED_VOICE:
                paths[name] = piper_voice_path()
            else:
                raise EngineUnavailable(
                    f"TTS_VOICES names {name!r}, but only {PACKAGED_VOICE} is packaged; "
                    "set PIPER_VOICE_DIR to a folder of Piper voices."
                )
        return cls(paths)

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0) -> Audio:
        """Speaks `text`; Piper yields one chunk per sentence, joined here."""
        from piper import SynthesisConfig

        started = time.perf_counter()
        engine = self.voices[voice]
        # Piper's length_scale stretches phoneme durations: 0.5 is twice as fast.
        config = SynthesisConfig(length_scale=1.0 / speed)
        chunks = [chunk.audio_int16_array for chunk in engine.synthesize(text, config)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return Audio(
            samples=samples.astype(np.int16, copy=False).reshape(-1),
            sample_rate=engine.config.sample_rate,
            seconds=round(time.perf_counter() - started, 3),
        )
