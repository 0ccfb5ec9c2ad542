"""First token after a job with another system prompt: the default one kept evaluated, or not.

Run: `.venv/bin/python -m bench.system_prompt [--rounds N]`. Loads the default preset's model in
this process and, for each of N questions, runs a job with another system prompt, then times the
first token of the question asked with the service's default one, alternately with the
adapter's kept system prompts (`LlamaCppGenerator._start_from_head`) and without (llama-cpp-python's
own prefix match only, which then shares nothing but the template's first tokens).
"""

from __future__ import annotations

import statistics
import time

from bench.answers import load_questions
from bench.table import Row, run_rounds
from models.settings import Settings
from worker.engines import Message
from worker.engines.llama_cpp import LlamaCppGenerator
from worker.pipeline import DEFAULT_SYSTEM_PROMPT

OTHER: list[Message] = [
    {"role": "system", "content": "You are a terse assistant for a shop."},
    {"role": "user", "content": "Hi"},
]


def rows(rounds: int = 5) -> list[Row]:
    """The first token's median seconds with and without the kept system prompt."""
    generator = LlamaCppGenerator.from_settings(Settings.from_env())
    kept = generator._start_from_head
    hello: list[Message] = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    generator.generate([*hello, {"role": "user", "content": "Hello"}], max_tokens=1, temperature=0)
    times: dict[str, list[float]] = {"with": [], "without": []}
    for question in [str(item["question"]) for item in load_questions()[:rounds]]:
        asked: list[Message] = [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        for mode, seconds in times.items():  # alternately: the machine's load falls on both
            generator._start_from_head = kept if mode == "with" else lambda *_: None  # type: ignore[method-assign]
            generator.generate(OTHER, max_tokens=1, temperature=0.0)
            started = time.perf_counter()
            generator.generate(asked, max_tokens=1, temperature=0.0)
            seconds.append(time.perf_counter() - started)
    with_, without = (statistics.median(times[mode]) for mode in ("with", "without"))
    name = f"first token after another system prompt, {generator.model}"
    return [
        Row(name, "default system prompt kept evaluated", with_ * 1000, "ms", with_ / without,
            f"not kept {without * 1000:.0f} ms"),
    ]  # fmt: skip


def main() -> None:
    run_rounds(__doc__, rows)


if __name__ == "__main__":
    main()
