"""Chat generation through an OpenAI-style chat client: an OpenAI-compatible server or MLC LLM.

`openai.OpenAI` talks to any OpenAI-compatible server (`mlc_llm serve`, llama.cpp's server,
vLLM, Ollama); `mlc_llm.MLCEngine` runs the model in this process and mirrors the same
`chat.completions.create(...)` call, so one adapter serves both and only construction differs.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from models.errors import ContextLengthExceeded, EngineUnavailable, VoiceChatError
from models.settings import Settings
from worker.engines import Message, Reply

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
    """Loads a Hugging Face `tokenizer.json` (or the folder holding one, as MLC models ship).

    Args:
        path: The file, or a folder with `tokenizer.json` in it.

    Returns:
        A function from text to token ids, special tokens left out.

    Raises:
        EngineUnavailable: The file is missing or is not a tokenizer; names LLM_TOKENIZER_PATH.
    """
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
    """The server's address for messages and logs: scheme, host, port and path, no credentials."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _Trimmed:
    """Passes streamed text on without leading or trailing whitespace, as `Reply.text` has none.

    Trailing whitespace is held back until more text follows it, so the pieces passed on join
    to exactly the stripped reply.
    """

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


@dataclass
class _Streamed:
    """What a streamed completion delivered, gathered as its chunks arrive."""

    pieces: list[str] = field(default_factory=list)
    usage: Any = None
    finish_reason: str | None = None
    first_delta_s: float | None = None


class OpenAIChatGenerator:
    """Answers through a client whose `chat.completions.create` speaks OpenAI's chat API.

    Args:
        client: `openai.OpenAI`, `mlc_llm.MLCEngine`, or anything with the same call.
        model: The model name sent with each request.
        context_tokens: The context window the prompt and the reply must fit in.
        tokenizer: The model's own tokenizer, for exact counts; None estimates them.
        source: Names the engine in error messages, with the setting that chose it.
    """

    def __init__(
        self,
        client: Any,
        *,
        model: str,
        context_tokens: int,
        tokenizer: Encode | None,
        source: str = "The language model server",
    ) -> None:
        self.client = client
        self.model = model
        self.context_tokens = context_tokens
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIChatGenerator:
        """Connects to the OpenAI-compatible server at `LLM_BASE_URL` (`LLM_ENGINE=openai`).

        The model is `LLM_MODEL`, or the first one the server lists. `LLM_API_KEY` is sent as
        the bearer token; servers that need none get "none".

        Raises:
            EngineUnavailable: `LLM_BASE_URL` is unset, or the server cannot list its models.
        """
        if not settings.llm_base_url:
            raise EngineUnavailable(
                "LLM_ENGINE=openai needs LLM_BASE_URL, e.g. http://127.0.0.1:8000/v1."
            )
        source = f"The language model server at {server_name(settings.llm_base_url)}"
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
            source=f"{source} (LLM_BASE_URL)",
        )
        if not generator.model:
            generator.model = generator.first_served_model()
        _LOGGER.info("llm server=%s model=%s", server_name(settings.llm_base_url), generator.model)
        return generator

    def first_served_model(self) -> str:
        """Asks the server which models it serves and returns the first.

        Raises:
            EngineUnavailable: The server cannot be reached or serves none.
        """
        try:
            served = [model.id for model in self.client.models.list()]
        except openai.OpenAIError as error:
            raise self._translate(error) from error
        if not served:
            raise EngineUnavailable(f"{self.source} serves no model; set LLM_MODEL.")
        return str(served[0])

    def close(self) -> None:
        """Releases the client's connections."""
        self.client.close()

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens these messages take with the model's chat template.

        With the model's tokenizer (`LLM_TOKENIZER_PATH`, or MLC's own) each message's content
        is counted exactly and the template's special tokens are added as a fixed
        `MESSAGE_OVERHEAD_TOKENS` per message plus `REPLY_PRIMER_TOKENS`. Without it the
        content is estimated conservatively as UTF-8 bytes / 3, which over-counts English.
        """
        total = REPLY_PRIMER_TOKENS
        for message in messages:
            content = message["content"]
            if self.tokenizer is not None:
                total += len(self.tokenizer(content))
            else:
                total += math.ceil(len(content.encode()) / ESTIMATED_BYTES_PER_TOKEN)
            total += MESSAGE_OVERHEAD_TOKENS
        return total

    def generate(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        on_delta: Callable[[str], None] | None = None,
    ) -> Reply:
        """Answers the conversation, streaming the reply as the engine produces it.

        The prompt is measured with `count_tokens` first, the measure the pipeline trims the
        history by: exact with a tokenizer, an over-estimate without one.

        Args:
            messages: The conversation, system prompt first.
            max_tokens: The most tokens the reply may have.
            temperature: Sampling temperature; 0 is greedy.
            on_delta: Called with each new piece of the reply; the pieces join to `Reply.text`.

        Returns:
            The reply with token counts: the engine's usage report, or counted here when the
            stream has none (llama-cpp-python's server sends none).

        Raises:
            ContextLengthExceeded: The prompt and `max_tokens` do not fit `context_tokens`, or
                the engine says the prompt does not fit its own context.
            EngineUnavailable: The server cannot be reached, or refuses the request.
        """
        started = time.perf_counter()
        measured = self.count_tokens(messages)
        if measured + max_tokens > self.context_tokens:
            raise self._too_long(measured, max_tokens)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        streamed = self._read_stream(request, started, on_delta)
        if streamed.finish_reason is None and not streamed.pieces:
            raise self._diagnose_empty_stream(request)
        text = "".join(streamed.pieces).strip()
        prompt_tokens, completion_tokens = self._token_counts(streamed, measured, text)
        seconds = time.perf_counter() - started
        _LOGGER.debug(
            "llm reply model=%s prompt_tokens=%d completion_tokens=%d first_delta_s=%s "
            "total_s=%.2f",
            self.model,
            prompt_tokens,
            completion_tokens,
            None if streamed.first_delta_s is None else round(streamed.first_delta_s, 3),
            seconds,
        )
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=streamed.finish_reason,
            seconds=round(seconds, 3),
        )

    def _read_stream(
        self, request: dict[str, Any], started: float, on_delta: Callable[[str], None] | None
    ) -> _Streamed:
        """Streams the completion, passing each new piece of text on, trimmed, as it comes."""
        trimmed = _Trimmed()
        streamed = _Streamed()
        for chunk in self._stream(request):
            if getattr(chunk, "usage", None) is not None:
                streamed.usage = chunk.usage
            for choice in chunk.choices or ():
                streamed.finish_reason = choice.finish_reason or streamed.finish_reason
                content = choice.delta.content if choice.delta is not None else None
                if not content:
                    continue
                streamed.pieces.append(content)
                delta = trimmed.feed(content)
                if not delta:
                    continue
                if streamed.first_delta_s is None:
                    streamed.first_delta_s = time.perf_counter() - started
                if on_delta is not None:
                    on_delta(delta)
        return streamed

    def _token_counts(self, streamed: _Streamed, measured: int, text: str) -> tuple[int, int]:
        """The prompt's and the reply's tokens: the engine's usage report, else counted here."""
        if streamed.usage is not None:
            return int(streamed.usage.prompt_tokens), int(streamed.usage.completion_tokens)
        # llama.cpp and MLC stream one token a chunk.
        completion = len(self.tokenizer(text)) if self.tokenizer else len(streamed.pieces)
        return measured, completion

    def _stream(self, request: dict[str, Any]) -> Iterator[Any]:
        """Yields the completion's chunks, turning the engine's errors into the domain's.

        Only the engine's own errors are translated: an exception raised by the caller's
        `on_delta` happens outside this generator and passes through untouched.
        """
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
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _diagnose_empty_stream(self, request: dict[str, Any]) -> VoiceChatError:
        """Finds out why a stream ended before its first token.

        llama-cpp-python's server reports an error in a stream that has begun by closing it
        (e.g. a prompt longer than its n_ctx); the same request without streaming, for one
        token, gets the error as an HTTP status instead.
        """
        try:
            self.client.chat.completions.create(**{**request, "max_tokens": 1}, stream=False)
        except (openai.OpenAIError, ValueError) as error:
            return self._translate(error)
        return EngineUnavailable(f"{self.source} ended its reply before the first token.")

    def _too_long(self, prompt_tokens: int | None = None, max_tokens: int = 0) -> VoiceChatError:
        if prompt_tokens is None:
            return ContextLengthExceeded(
                f"The prompt does not fit the model's context (LLM_CONTEXT_TOKENS="
                f"{self.context_tokens} may exceed what the engine serves)."
            )
        return ContextLengthExceeded(
            f"The prompt takes about {prompt_tokens} tokens and the reply up to {max_tokens}: "
            f"more than the model's {self.context_tokens}-token context."
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
            # MLC's in-process engine raises BadRequestError, a ValueError, where a server
            # would answer 400.
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
        """Loads `LLM_MODEL` (an MLC model folder or `HF://org/repo`) onto `LLM_DEVICE`.

        Counts tokens with `LLM_TOKENIZER_PATH` when set, else with the engine's tokenizer.
        The KV cache is sized to `LLM_CONTEXT_TOKENS`, not the model's full window, so a 7B
        model fits beside Whisper and the TTS voice in an Orin's shared memory.

        Raises:
            EngineUnavailable: mlc_llm is not installed, `LLM_MODEL` is unset, or the model or
                its library is not cached where MLC's policies forbid fetching it.
        """
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
