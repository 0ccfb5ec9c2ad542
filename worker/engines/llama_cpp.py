"""Chat generation with llama.cpp through llama-cpp-python, the CPU default."""

from __future__ import annotations

import time
from pathlib import Path

from models.errors import ContextLengthExceeded, EngineUnavailable
from models.settings import Settings
from worker.engines import Message, Reply
from worker.model_files import smollm2_path


class LlamaCppGenerator:
    """A loaded GGUF model answering with the chat template stored in the file."""

    def __init__(self, model_path: Path, *, context_tokens: int, threads: int) -> None:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise EngineUnavailable(f"LLM_MODEL_PATH={model_path} is not a file.")
        self.context_tokens = context_tokens
        # llama.cpp picks its own thread count, 1 on some machines; name it explicitly.
        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppGenerator:
        """Loads `LLM_MODEL_PATH`, or the packaged SmolLM2-135M-Instruct."""
        path = Path(settings.llm_model_path) if settings.llm_model_path else smollm2_path()
        return cls(path, context_tokens=settings.llm_context_tokens, threads=settings.llm_threads)

    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float) -> Reply:
        """Answers the conversation with the model's own chat template.

        Raises:
            ContextLengthExceeded: The prompt and `max_tokens` do not fit the context window.
        """
        started = time.perf_counter()
        try:
            completion = self.llm.create_chat_completion(
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                # Small models loop on a phrase without it; 1.1 is llama.cpp's own CLI default.
                repeat_penalty=1.1,
                stream=False,
            )
        except ValueError as error:
            # llama-cpp-python raises ValueError("Requested tokens (…) exceed context window …").
            if "context window" in str(error):
                raise ContextLengthExceeded(
                    f"The prompt does not fit the model's {self.context_tokens}-token context."
                ) from error
            raise
        choice = completion["choices"][0]  # type: ignore[index]
        usage = completion["usage"]  # type: ignore[index]
        return Reply(
            text=(choice["message"]["content"] or "").strip(),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            finish_reason=choice.get("finish_reason"),
            seconds=round(time.perf_counter() - started, 3),
        )
