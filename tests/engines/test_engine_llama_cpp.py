"""The llama.cpp adapter on the packaged SmolLM2-135M-Instruct: system prompts kept evaluated."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import QUESTION
from tests.engines.test_engine_openai import fast_model
from worker.engines import Message
from worker.engines.llama_cpp import LlamaCppGenerator
from worker.pipeline import DEFAULT_SYSTEM_PROMPT

ASKED: list[Message] = [
    {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
    {"role": "user", "content": QUESTION},
]
OTHER: list[Message] = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello!"},
]


def test_a_system_prompt_is_not_evaluated_again_after_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = LlamaCppGenerator(fast_model(), context_tokens=1024, threads=2)
    first = generator.generate(ASKED, max_tokens=16, temperature=0.0)
    generator.generate(OTHER, max_tokens=4, temperature=0.0)
    batches: list[int] = []
    evaluate = generator.llm.eval

    def counted(tokens: Any) -> None:
        batches.append(len(tokens))
        evaluate(tokens)

    monkeypatch.setattr(generator.llm, "eval", counted)
    again = generator.generate(ASKED, max_tokens=16, temperature=0.0)
    # Only the question was evaluated: the system prompt's state was loaded, and it answers alike.
    system_tokens = generator.count_tokens(ASKED[:1])
    assert batches[0] <= again.prompt_tokens - system_tokens + 4
    assert again.text == first.text
