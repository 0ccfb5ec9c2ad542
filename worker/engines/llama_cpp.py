"""Chat generation with llama.cpp through llama-cpp-python, the CPU default."""

from __future__ import annotations

import ctypes
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.errors import ContextLengthExceeded, EngineUnavailable
from models.presets import llm_model_id
from models.settings import Settings
from worker.engines import ENGINE_SAMPLING, Message, Reply, Sampling
from worker.engines.model_files import llm_model_file

# The evaluated states of this many system prompts are kept, the most recently used.
HEADS_KEPT = 4


def _chat_formatter(llm: Any) -> Any:
    """The Jinja formatter llama-cpp-python builds from the file's `tokenizer.chat_template`."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise EngineUnavailable("LLM_MODEL_PATH names a GGUF file without a chat template.")
    eos, bos = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )


class LlamaCppGenerator:
    """A loaded GGUF model answering with the chat template stored in the file."""

    def __init__(
        self, model_path: Path, *, context_tokens: int, threads: int, model: str = ""
    ) -> None:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise EngineUnavailable(f"LLM_MODEL_PATH={model_path} is not a file.")
        self.model = model or model_path.stem  # the id /readyz reports
        self.context_tokens = context_tokens
        # llama.cpp picks its own thread count, 1 on some machines; name it explicitly.
        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self._formatter = _chat_formatter(self.llm)
        # A system prompt's tokens -> sequence 0's KV cache with them evaluated.
        self._heads: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppGenerator:
        """Loads `LLM_MODEL_PATH`, or the `LLM_PRESET`'s packaged model."""
        return cls(
            llm_model_file(settings),
            context_tokens=settings.llm_context_tokens,
            threads=settings.llm_threads,
            model=llm_model_id(settings),
        )

    def count_tokens(self, messages: list[Message]) -> int:
        """Counts the prompt tokens, evaluating nothing."""
        return len(self._tokens(messages))

    def _tokens(self, messages: list[Message]) -> list[int]:
        """The prompt's tokens as llama-cpp-python's chat handler makes them."""
        rendered = self._formatter(messages=list(messages))  # type: ignore[arg-type]
        return self.llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )

    def _start_from_head(self, messages: list[Message], prompt: list[int]) -> None:
        """Starts the evaluated tokens with the prompt's system messages, kept evaluated across
        jobs (llama-cpp-python's prefix match evaluates only the rest). Only sequence 0's KV cache
        is kept: `Llama.load_state` clears a 300 MB logits buffer, as slow as the prompt."""
        import llama_cpp

        system = list(itertools.takewhile(lambda m: m["role"] == "system", messages))
        if not system:
            return
        head = prompt[: llama_cpp.Llama.longest_token_prefix(self._tokens(system), prompt)]
        evaluated = self.llm.input_ids[: self.llm.n_tokens].tolist()
        if llama_cpp.Llama.longest_token_prefix(evaluated, head) == len(head):
            return  # the last job's prompt began the same way
        key = tuple(head)
        state = self._heads.get(key)
        if state is None:
            self.llm.n_tokens = 0
            self.llm.eval(head)
            state = (ctypes.c_uint8 * llama_cpp.llama_state_seq_get_size(self.llm.ctx, 0))()
            llama_cpp.llama_state_seq_get_data(self.llm.ctx, state, len(state), 0)
        elif llama_cpp.llama_state_seq_set_data(self.llm.ctx, state, len(state), 0):
            self.llm.input_ids[: len(head)] = head
            self.llm.n_tokens = len(head)
        else:  # not restored: the whole prompt is evaluated
            self.llm.n_tokens = 0
        self._heads[key] = state
        self._heads.move_to_end(key)
        while len(self._heads) > HEADS_KEPT:
            self._heads.popitem(last=False)

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        """Answers with the model's own chat template, streaming the text to `on_delta`."""
        started = time.perf_counter()
        prompt = self._tokens(messages)
        prompt_tokens = len(prompt)
        if prompt_tokens + max_tokens > self.context_tokens:
            raise ContextLengthExceeded(
                f"The prompt takes {prompt_tokens} tokens and the reply may take {max_tokens}: "
                f"more than the model's {self.context_tokens}-token context window."
            )
        self._start_from_head(messages, prompt)
        chunks = self.llm.create_chat_completion(
            messages=list(messages),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=temperature,
            # Small models loop on a phrase without it; 1.1 is llama.cpp's own CLI default.
            repeat_penalty=1.1,
            stream=True,
            **sampling.given(),
        )
        pieces: list[str] = []
        finish_reason = None
        chunk: Any
        for chunk in chunks:
            choice = chunk["choices"][0]
            piece = str(choice["delta"].get("content") or "")
            if piece:
                pieces.append(piece)
                if on_delta is not None:
                    on_delta(piece)
            finish_reason = choice.get("finish_reason") or finish_reason
        text = "".join(pieces)
        # The stream carries no usage; the reply's tokens are counted as the model reads them.
        completion_tokens = (
            len(self.llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        )
        return Reply(
            text=text.strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            seconds=round(time.perf_counter() - started, 3),
        )
