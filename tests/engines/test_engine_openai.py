"""The OpenAI-style chat adapter against llama-cpp-python's real server, and engine validation.

The server runs the packaged SmolLM2-135M-Instruct, started the way its docs show
(`python -m llama_cpp.server`), so the adapter speaks real HTTP and real server-sent events.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.stack import free_port
from models.errors import ContextLengthExceeded, EngineUnavailable
from models.presets import PRESETS
from scripts.launch import worker_command
from tests.conftest import QUESTION, ROOT, make_settings
from worker.engines import Message, Sampling
from worker.engines.model_files import WHISPER_PARTS, package_dir, preset_file
from worker.engines.openai_chat import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMER_TOKENS,
    MLCChatGenerator,
    OpenAIChatGenerator,
    _Trimmed,
    load_tokenizer,
)
from worker.engines.preflight import validate_engines

SYSTEM = "You are a friendly assistant. Answer in one short sentence."
CONVERSATION: list[Message] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
]
# About 3,000 of SmolLM2's tokens: more than the server's 2,048-token context.
TOO_LONG: list[Message] = [{"role": "user", "content": "word " * 3000}]
SERVER_CONTEXT = 2048


def fast_model() -> Path:
    """The packaged SmolLM2-135M-Instruct, as LLM_PRESET=fast loads it."""
    return preset_file(PRESETS["fast"], Path())


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on a free port; yields its /v1 base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("llm-server") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(fast_model()),
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(SERVER_CONTEXT), "--n_threads", "2",
                # The server keeps every position's logits by default, which makes each token
                # about 30 times slower on a CPU (0.8 against 22 tokens/s for SmolLM2 here).
                "--logits_all", "false",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if requests.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def generator(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> OpenAIChatGenerator:
    settings = make_settings(
        tmp_path_factory.mktemp("openai"), LLM_ENGINE="openai", LLM_BASE_URL=llm_server
    )
    return OpenAIChatGenerator.from_settings(settings)


# The adapter through HTTP --------------------------------------------------------------------


def test_model_defaults_to_the_first_the_server_lists(generator: OpenAIChatGenerator) -> None:
    assert generator.model == str(fast_model())
    assert generator.context_tokens == 2048


def test_reply_streams_deltas_that_join_to_the_reply(generator: OpenAIChatGenerator) -> None:
    deltas: list[str] = []
    reply = generator.generate(CONVERSATION, max_tokens=40, temperature=0.0, on_delta=deltas.append)

    assert reply.text
    assert len(deltas) >= 3
    assert "".join(deltas) == reply.text
    # llama-cpp-python's server sends no usage in a stream: the adapter counts.
    assert reply.prompt_tokens == generator.count_tokens(CONVERSATION)
    assert 1 <= reply.completion_tokens <= 40
    assert reply.finish_reason in ("stop", "length")
    assert reply.seconds > 0


def test_sampling_options_reach_the_server(generator: OpenAIChatGenerator) -> None:
    count: list[Message] = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    whole = generator.generate(count, max_tokens=40, temperature=0.0)
    assert "5" in whole.text, whole.text  # unstopped, the model counts past 5
    stopped = Sampling(stop=("5",), top_p=0.9, seed=1, presence_penalty=0.1)
    cut = generator.generate(count, max_tokens=40, temperature=0.0, sampling=stopped)
    assert cut.text and "5" not in cut.text and cut.finish_reason == "stop"
    # A seed repeats a sampled reply. The unseeded call first leaves the prompt cached, so each
    # seeded call evaluates it alike: llama.cpp's logits for a prompt evaluated anew differ in
    # the last bits, enough to sample another token at temperature 1.
    story: list[Message] = [{"role": "user", "content": "Tell me a short story about a fox."}]
    generator.generate(story, max_tokens=8, temperature=1.0)
    seeded = Sampling(seed=7, top_p=1.0)
    first, again = (
        generator.generate(story, max_tokens=8, temperature=1.0, sampling=seeded).text
        for _ in range(2)
    )
    assert first and first == again, (first, again)


def test_an_error_in_the_listener_passes_through_untranslated(
    generator: OpenAIChatGenerator,
) -> None:
    def refuse(_delta: str) -> None:
        raise ValueError("context of the caller, not of the model")

    with pytest.raises(ValueError, match="caller"):
        generator.generate(CONVERSATION, max_tokens=20, temperature=0.0, on_delta=refuse)
    # The abandoned stream was closed: the server answers the next request at once.
    assert generator.generate(CONVERSATION, max_tokens=3, temperature=0.0).text


def test_prompt_over_the_context_is_refused_before_it_is_sent(
    generator: OpenAIChatGenerator,
) -> None:
    with pytest.raises(ContextLengthExceeded, match="2048-token context"):
        generator.generate(TOO_LONG, max_tokens=10, temperature=0.0)
    # The prompt fits but the reply's room does not.
    fits: list[Message] = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(ContextLengthExceeded):
        generator.generate(fits, max_tokens=2000, temperature=0.0)


def test_the_servers_own_refusal_is_a_context_error(llm_server: str, tmp_path: Path) -> None:
    # LLM_CONTEXT_TOKENS set above the server's n_ctx: the adapter's check passes and the
    # server refuses. llama-cpp-python closes a stream that failed; the adapter asks again
    # without streaming and reads the 400.
    settings = make_settings(
        tmp_path, LLM_ENGINE="openai", LLM_BASE_URL=llm_server, LLM_CONTEXT_TOKENS="8192"
    )
    generator = OpenAIChatGenerator.from_settings(settings)
    with pytest.raises(ContextLengthExceeded, match="LLM_CONTEXT_TOKENS=8192"):
        generator.generate(TOO_LONG, max_tokens=10, temperature=0.0)


def test_unreachable_server_is_a_clear_engine_error(tmp_path: Path) -> None:
    url = f"http://someone:hunter2@127.0.0.1:{free_port()}/v1"
    secret = "sk-do-not-print"
    settings = make_settings(tmp_path, LLM_ENGINE="openai", LLM_BASE_URL=url, LLM_API_KEY=secret)

    with pytest.raises(EngineUnavailable) as listing:
        OpenAIChatGenerator.from_settings(settings)  # asks the server for its models
    named = make_settings(
        tmp_path, LLM_ENGINE="openai", LLM_BASE_URL=url, LLM_API_KEY=secret, LLM_MODEL="m"
    )
    generator = OpenAIChatGenerator.from_settings(named)
    with pytest.raises(EngineUnavailable) as answering:
        generator.generate(CONVERSATION, max_tokens=5, temperature=0.0)

    for error in (listing.value, answering.value):
        message = str(error)
        assert error.code == "engine_unavailable"
        assert "cannot be reached" in message and "LLM_BASE_URL" in message
        assert "127.0.0.1" in message
        assert secret not in message and "hunter2" not in message
    assert secret not in repr(named)


def test_openai_engine_needs_a_base_url(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="LLM_BASE_URL"):
        OpenAIChatGenerator.from_settings(make_settings(tmp_path, LLM_ENGINE="openai"))


# Token counting -------------------------------------------------------------------------------


def _whisper_tokenizer() -> Path:
    """A real Hugging Face tokenizer.json that ships in a package (Whisper base's)."""
    return package_dir(WHISPER_PARTS[0], "WHISPER_MODEL_DIR") / "data" / "tokenizer.json"


def test_counts_with_the_tokenizer_when_one_is_given() -> None:
    encode = load_tokenizer(str(_whisper_tokenizer()))
    assert load_tokenizer(str(_whisper_tokenizer().parent))(QUESTION) == encode(QUESTION)
    generator = OpenAIChatGenerator(None, model="m", context_tokens=2048, tokenizer=encode)

    expected = sum(len(encode(m["content"])) for m in CONVERSATION)
    overhead = MESSAGE_OVERHEAD_TOKENS * len(CONVERSATION) + REPLY_PRIMER_TOKENS
    assert generator.count_tokens(CONVERSATION) == expected + overhead
    assert 5 <= len(encode(QUESTION)) <= 10


def test_estimate_without_a_tokenizer_over_counts() -> None:
    from llama_cpp import Llama

    generator = OpenAIChatGenerator(None, model="m", context_tokens=2048, tokenizer=None)
    # SmolLM2's own tokenizer, vocabulary only, for the true count.
    vocab = Llama(model_path=str(fast_model()), vocab_only=True, verbose=False)
    text = " ".join([QUESTION, SYSTEM] * 20)
    true_count = len(vocab.tokenize(text.encode(), add_bos=False))
    estimate = generator.count_tokens([{"role": "user", "content": text}])
    assert true_count < estimate < true_count * 2


def test_missing_tokenizer_names_its_setting(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="LLM_TOKENIZER_PATH"):
        load_tokenizer(str(tmp_path / "nowhere.json"))


@pytest.mark.parametrize(
    ("pieces", "joined"),
    [
        (["  Hello", " ", "world", "  \n"], "Hello world"),
        (["\n", " ", "Yes."], "Yes."),
        (["a ", " b", "\n\n"], "a  b"),
        (["   "], ""),
    ],
)
def test_streamed_pieces_join_to_the_stripped_text(pieces: list[str], joined: str) -> None:
    trimmed = _Trimmed()
    assert "".join(trimmed.feed(piece) for piece in pieces) == joined == "".join(pieces).strip()


@pytest.mark.skipif(
    importlib.util.find_spec("mlc_llm") is not None,
    reason="mlc_llm is installed here: the missing-library path cannot be shown",
)
def test_mlc_without_mlc_llm_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, LLM_ENGINE="mlc", LLM_MODEL="HF://mlc-ai/x-MLC")
    with pytest.raises(EngineUnavailable, match="LLM_ENGINE=mlc needs the mlc_llm package"):
        MLCChatGenerator.from_settings(settings)


# Validation at worker start ------------------------------------------------------------------


def test_the_default_engines_validate(tmp_path: Path) -> None:
    validate_engines(make_settings(tmp_path))
    validate_engines(make_settings(tmp_path, LLM_ENGINE="harness.engines:EchoGenerator"))
    validate_engines(make_settings(tmp_path, LLM_ENGINE="openai", LLM_BASE_URL="http://x:1/v1"))


def test_unknown_engine_is_named_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable) as raised:
        validate_engines(make_settings(tmp_path, LLM_ENGINE="nonsense"))
    message = str(raised.value)
    assert "LLM_ENGINE='nonsense' is not a known engine" in message
    assert "llama-cpp" in message and "mlc" in message and "openai" in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = make_settings(
        tmp_path,
        STT_ENGINE="faster-whisper",
        WHISPER_MODEL_DIR=str(empty),
        LLM_MODEL_PATH=str(tmp_path / "missing.gguf"),
        LLM_TOKENIZER_PATH=str(tmp_path / "tokenizer.json"),
        TTS_ENGINE="piper",
        PIPER_VOICE_DIR=str(tmp_path / "voices"),
        COQUI_CONFIG_PATH=str(tmp_path / "config.json"),
    )
    with pytest.raises(EngineUnavailable) as raised:
        validate_engines(settings)
    message = str(raised.value)
    assert f"WHISPER_MODEL_DIR={empty} holds no model.bin" in message
    assert f"LLM_MODEL_PATH={tmp_path / 'missing.gguf'} is not an existing file" in message
    assert "LLM_TOKENIZER_PATH=" in message
    assert f"PIPER_VOICE_DIR={tmp_path / 'voices'} is not an existing folder" in message
    assert "COQUI_CONFIG_PATH=" in message
    assert "\n" not in message


def test_voice_files_and_whisper_paths_are_checked(tmp_path: Path) -> None:
    (tmp_path / "en_US-joe-medium.onnx").write_bytes(b"")  # no .onnx.json beside it
    settings = make_settings(
        tmp_path,
        STT_ENGINE="harness.engines:InstantTranscriber",
        WHISPER_MODEL=str(tmp_path / "base.en.pt"),
        PIPER_VOICE_DIR=str(tmp_path),
        COQUI_MODEL_PATH=str(tmp_path / "vits"),
    )
    with pytest.raises(EngineUnavailable) as raised:
        validate_engines(settings)
    message = str(raised.value)
    assert f"WHISPER_MODEL={tmp_path / 'base.en.pt'} is not an existing file" in message
    assert "lacks en_US-joe-medium.onnx and its .json" in message
    assert "COQUI_MODEL_PATH=" in message
    # A model name, not a path, is openai-whisper's to find in its cache.
    validate_engines(
        make_settings(
            tmp_path, STT_ENGINE="harness.engines:InstantTranscriber", WHISPER_MODEL="base"
        )
    )


@pytest.mark.skipif(
    importlib.util.find_spec("mlc_llm") is not None,
    reason="mlc_llm is installed here: the missing-library path cannot be shown",
)
def test_mlc_needs_its_library_and_a_model(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable) as raised:
        validate_engines(make_settings(tmp_path, LLM_ENGINE="mlc", MLC_MODE="fast"))
    message = str(raised.value)
    assert "LLM_ENGINE='mlc' needs the mlc_llm package" in message
    assert "LLM_MODEL must be set for LLM_ENGINE=mlc" in message
    assert "MLC_MODE='fast'" in message
    with pytest.raises(EngineUnavailable, match="neither HF://org/repo nor an MLC model folder"):
        validate_engines(make_settings(tmp_path, LLM_ENGINE="mlc", LLM_MODEL=str(tmp_path)))


def test_openai_needs_an_http_base_url_and_keeps_it_secret(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="LLM_BASE_URL must be set"):
        validate_engines(make_settings(tmp_path, LLM_ENGINE="openai"))
    with pytest.raises(EngineUnavailable, match="LLM_BASE_URL must be an http") as raised:
        validate_engines(
            make_settings(tmp_path, LLM_ENGINE="openai", LLM_BASE_URL="ftp://me:hunter2@host/v1")
        )
    assert "hunter2" not in str(raised.value)


def test_coqui_needs_a_model_and_its_config(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="COQUI_MODEL"):
        validate_engines(make_settings(tmp_path, TTS_ENGINE="coqui"))
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")
    settings = make_settings(tmp_path, TTS_ENGINE="coqui", COQUI_MODEL_PATH=str(checkpoint))
    with pytest.raises(EngineUnavailable, match="COQUI_CONFIG_PATH is unset"):
        validate_engines(settings)


def test_a_class_path_to_a_missing_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=re.escape("TTS_ENGINE='nowhere.at_all:Voice'")):
        validate_engines(make_settings(tmp_path, TTS_ENGINE="nowhere.at_all:Voice"))


def test_worker_with_an_unknown_engine_exits_at_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        # Nothing listens there: the worker must stop before it tries the broker.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'voicechat.db'}",
        "LLM_ENGINE": "nonsense",
    }
    command = worker_command(1)
    started = time.monotonic()
    finished = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    lines = [line for line in output.splitlines() if "LLM_ENGINE='nonsense'" in line]
    assert len(lines) == 1, output
    assert lines[0].startswith("voicechat worker not started: ")
    assert "Traceback" not in output
    assert time.monotonic() - started < 60
