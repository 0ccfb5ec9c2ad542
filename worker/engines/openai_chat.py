"""Chat generation through `chat.completions.create`: any OpenAI-compatible server, or MLC LLM.

`mlc_llm.MLCEngine` mirrors `openai.OpenAI`'s call in-process, so only construction differs.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from models.errors import ContextLengthExceeded, EngineUnavailable, VoiceChatError
from models.settings import Settings
from worker.engines import ENGINE_SAMPLING, Message, Reply, Sampling

_LOGGER = logging.getLogger(__name__)

# Chat templates wrap each message in a few special tokens: ChatML's "<|im_start|>user\n" …
# "<|im_end|>\n" is 5, Llama 3's header and <|eot_id|> 5, Mistral's [INST] … [/INST] 2 to 4.
# Counting 6 per message and 4 for the assistant's opening (plus BOS) errs on the high side.
MESSAGE_OVERHEAD_TOKENS = 6
REPLY_PRIMER_TOKENS = 4
# Without the model's tokenizer: English BPE vocabularies average about 4 bytes of UTF-8 per
# token; 3 over-counts, so a history trimmed to this estimate still fits.
ESTIMATED_BYTES_PER_TOKEN = 3
# A 400 whose message says the prompt is too long: llama.cpp and vLLM say "maximum context
# length", MLC "larger than the model input length limit", others "too long" or "n_ctx".
_CONTEXT_ERROR = re.compile(r"context|length|too long|too many tokens|n_ctx", re.IGNORECASE)

Encode = Callable[[str], Sequence[int]]
"""Turns text into the model's token ids, without special tokens."""


def load_tokenizer(path: str) -> Encode:
    """Loads a Hugging Face `tokenizer.json`, or the folder holding one (as MLC models ship)."""
    from tokenizers import Tokenizer

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise EngineUnavailable(f"LLM_TOKENIZER_PATH={path} is not a tokenizer.json file.")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise EngineUnavailable(
            f"LLM_TOKENIZER_PATH={path} cannot be read as a tokenizer."
        ) from error

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    return encode


def server_name(base_url: str) -> str:
    """The server's address for messages and logs, without credentials."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


class _Trimmed:
    """Streamed text stripped like `Reply.text`: trailing space is held until more text follows."""

    def __init__(self) -> None:
        self.started = False
        self.pending = ""

    def feed(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        text = self.pending + piece
        body = text.rstrip()
        self.pending = text[len(body) :]
        return body


@dataclass(eq=False)
class OpenAIChatGenerator:
    """Answers through `client.chat.completions.create`; `source` names the engine in errors."""

    client: Any
    _: KW_ONLY
    model: str
    context_tokens: int
    tokenizer: Encode | None  # None: token counts are estimated
    source: str = "The language model server"

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIChatGenerator:
        """Connects to `LLM_BASE_URL` for `LLM_MODEL`, or the first model the server lists."""
        if not settings.llm_base_url:
            raise EngineUnavailable(
                "LLM_ENGINE=openai needs LLM_BASE_URL, e.g. http://127.0.0.1:8000/v1."
            )
        server = server_name(settings.llm_base_url)
        client = openai.OpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value() or "none",
            # Fail fast on a server that is down; a reply may take as long as the job may.
            timeout=openai.Timeout(float(settings.task_soft_time_limit), connect=5.0),
            max_retries=2,
        )
        tokenizer = (
            load_tokenizer(settings.llm_tokenizer_path) if settings.llm_tokenizer_path else None
        )
        generator = cls(
            client,
            model=settings.llm_model,
            context_tokens=settings.llm_context_tokens,
            tokenizer=tokenizer,
            source=f"The language model server at {server} (LLM_BASE_URL)",
        )
        if not generator.model:
            try:
                served = [model.id for model in client.models.list()]
            except openai.OpenAIError as error:
                raise generator._translate(error) from error
            if not served:
                raise EngineUnavailable(f"{generator.source} serves no model; set LLM_MODEL.")
            generator.model = str(served[0])
        _LOGGER.info("llm server=%s model=%s", server, generator.model)
        return generator

    def close(self) -> None:
        """Releases the client's connections."""
        self.client.close()

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens with the chat template's overhead, estimated without a tokenizer."""
        total = REPLY_PRIMER_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages)
        for message in messages:
            content = message["content"]
            if self.tokenizer is not None:
                total += len(self.tokenizer(content))
            else:
                total += math.ceil(len(content.encode()) / ESTIMATED_BYTES_PER_TOKEN)
        return total

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling = ENGINE_SAMPLING,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        """Streams the reply to `on_delta`; the prompt is measured as the pipeline trims it."""
        started = time.perf_counter()
        measured = self.count_tokens(messages)
        if measured + max_tokens > self.context_tokens:
            raise ContextLengthExceeded(
                f"The prompt takes about {measured} tokens and the reply up to {max_tokens}: "
                f"more than the model's {self.context_tokens}-token context."
            )
        request: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            **sampling.given(),
        }
        pieces, usage, finish_reason, first_delta_s = self._read_stream(request, started, on_delta)
        if finish_reason is None and not pieces:
            raise self._diagnose_empty_stream(request)
        text = "".join(pieces).strip()
        if usage is not None:
            prompt_tokens, completion_tokens = (
                int(usage.prompt_tokens),
                int(usage.completion_tokens),
            )
        else:  # llama.cpp sends no usage; it and MLC stream one token a chunk
            prompt_tokens = measured
            completion_tokens = len(self.tokenizer(text)) if self.tokenizer else len(pieces)
        seconds = time.perf_counter() - started
        _LOGGER.debug(
            "llm reply model=%s prompt_tokens=%d completion_tokens=%d first_delta_s=%s "
            "total_s=%.2f",
            self.model,
            prompt_tokens,
            completion_tokens,
            None if first_delta_s is None else round(first_delta_s, 3),
            seconds,
        )
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            seconds=round(seconds, 3),
        )

    def _read_stream(
        self, request: dict[str, Any], started: float, on_delta: Callable[[str], None] | None
    ) -> tuple[list[str], Any, str | None, float | None]:
        """The streamed pieces, usage, finish reason and first delta's time; each trimmed piece
        is passed on."""
        trimmed = _Trimmed()
        pieces: list[str] = []
        usage: Any = None
        finish_reason: str | None = None
        first_delta_s: float | None = None
        for chunk in self._stream(request):
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in chunk.choices or ():
                finish_reason = choice.finish_reason or finish_reason
                content = choice.delta.content if choice.delta is not None else None
                if not content:
                    continue
                pieces.append(content)
                if not (delta := trimmed.feed(content)):
                    continue
                if first_delta_s is None:
                    first_delta_s = time.perf_counter() - started
                if on_delta is not None:
                    on_delta(delta)
        return pieces, usage, finish_reason, first_delta_s

    def _stream(self, request: dict[str, Any]) -> Iterator[Any]:
        """Yields the chunks, translating the engine's errors (never those of `on_delta`)."""
        stream: Any = None
        try:
            stream = self.client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
            yield from stream
        except (openai.OpenAIError, ValueError) as error:
            raise self._translate(error) from error
        finally:
            # Stops the server's generation too when the caller gives up half-way.
            if (close := getattr(stream, "close", None)) is not None:
                close()

    def _diagnose_empty_stream(self, request: dict[str, Any]) -> VoiceChatError:
        """Why a stream ended before its first token, asked again without streaming (llama-cpp-
        python's server reports a begun stream's error, say past n_ctx, by closing it)."""
        try:
            self.client.chat.completions.create(**{**request, "max_tokens": 1}, stream=False)
        except (openai.OpenAIError, ValueError) as error:
            return self._translate(error)
        return EngineUnavailable(f"{self.source} ended its reply before the first token.")

    def _too_long(self) -> VoiceChatError:
        return ContextLengthExceeded(
            f"The prompt does not fit the model's context (LLM_CONTEXT_TOKENS="
            f"{self.context_tokens} may exceed what the engine serves)."
        )

    def _translate(self, error: Exception) -> VoiceChatError:
        """Maps an engine error to the domain's; raw server text goes to the log only."""
        if isinstance(error, openai.APIStatusError):
            return self._refused(error)
        if isinstance(error, openai.APITimeoutError):
            _LOGGER.warning("llm server timed out source=%s", self.source)
            return EngineUnavailable(f"{self.source} did not answer in time.")
        if isinstance(error, openai.APIConnectionError):
            _LOGGER.warning("llm server unreachable source=%s", self.source)
            return EngineUnavailable(f"{self.source} cannot be reached.")
        if isinstance(error, ValueError) and _CONTEXT_ERROR.search(str(error)):
            # MLC's in-process engine raises a ValueError where a server would answer 400.
            _LOGGER.warning("llm refused source=%s message=%s", self.source, error)
            return self._too_long()
        if isinstance(error, openai.OpenAIError):
            return EngineUnavailable(f"{self.source} failed: {type(error).__name__}.")
        raise error

    def _refused(self, error: openai.APIStatusError) -> VoiceChatError:
        """Maps an HTTP error status from the server."""
        status = error.status_code
        _LOGGER.warning(
            "llm server refused status=%d source=%s message=%s", status, self.source, error.message
        )
        if status == 400 and _CONTEXT_ERROR.search(error.message):
            return self._too_long()
        if status in (401, 403):
            return EngineUnavailable(f"{self.source} refused the API key (LLM_API_KEY).")
        if status == 404:
            return EngineUnavailable(f"{self.source} does not serve LLM_MODEL={self.model!r}.")
        return EngineUnavailable(f"{self.source} answered HTTP {status}.")


class MLCChatGenerator(OpenAIChatGenerator):
    """MLC LLM's engine in this process (`LLM_ENGINE=mlc`), the Jetson Orin's fast path."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MLCChatGenerator:
        """Loads `LLM_MODEL` (a folder or `HF://org/repo`) onto `LLM_DEVICE`; the KV cache is
        sized to `LLM_CONTEXT_TOKENS`, so a 7B model fits beside Whisper in an Orin's memory."""
        try:
            from mlc_llm import MLCEngine
            from mlc_llm.serve import EngineConfig
        except ImportError as error:
            raise EngineUnavailable(
                "LLM_ENGINE=mlc needs the mlc_llm package, which is not installed here; "
                "use the Jetson worker image (deploy/jetson/Dockerfile.worker)."
            ) from error
        if not settings.llm_model:
            raise EngineUnavailable("LLM_ENGINE=mlc needs LLM_MODEL, an MLC model or HF:// URL.")
        try:
            engine = MLCEngine(
                settings.llm_model,
                device=settings.llm_device,
                mode=settings.mlc_mode,
                engine_config=EngineConfig(
                    max_single_sequence_length=settings.llm_context_tokens,
                    max_total_sequence_length=settings.llm_context_tokens,
                ),
            )
        except RuntimeError as error:
            # The Orin's worker runs with MLC_JIT_POLICY and MLC_DOWNLOAD_CACHE_POLICY READONLY
            # (deploy/jetson/docker-compose.yaml): a model or library the fetch step did not
            # make is refused here, not compiled for minutes under Celery's start limit.
            if "_POLICY=READONLY" not in str(error):
                raise
            raise EngineUnavailable(
                f"LLM_MODEL={settings.llm_model} with LLM_CONTEXT_TOKENS="
                f"{settings.llm_context_tokens} needs a model or model library that is not in "
                f"MLC's cache, and this worker may not download or compile ({error}); rerun the "
                "fetch step: docker compose -f deploy/jetson/docker-compose.yaml --profile setup "
                "run --rm fetch-models"
            ) from error
        tokenizer: Encode = (
            load_tokenizer(settings.llm_tokenizer_path)
            if settings.llm_tokenizer_path
            else engine.tokenizer.encode
        )
        return cls(
            engine,
            model=settings.llm_model,
            context_tokens=settings.llm_context_tokens,
            tokenizer=tokenizer,
            source=f"MLC LLM with LLM_MODEL={settings.llm_model}",
        )

    def close(self) -> None:
        """Stops the engine's background thread and frees the GPU memory it holds."""
        self.client.terminate()
