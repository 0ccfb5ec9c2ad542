"""Answer quality of each installed model: short questions with keyword answers.

Run: `.venv/bin/python -m bench.answers [--system TEXT] [--show-misses]`. Each installed
`LLM_PRESET` model (and `LLM_MODEL_PATH`, when set) answers every question of
`bench/questions.jsonl` (general knowledge and one-step arithmetic) through the service's
llama.cpp adapter, with the service's default voice system prompt, at temperature 0. A reply
scores when it holds one of the question's keywords as a word. Also per model: tokens per second
once the first token is out (over all replies), and the median seconds to the first token and to
the first complete sentence (what a voice reply waits for before it can speak).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.table import Row, markdown
from models.errors import EngineUnavailable
from models.presets import PRESETS, llm_model_id
from models.settings import Settings
from worker.engines.llama_cpp import LlamaCppGenerator
from worker.engines.model_files import llm_model_file
from worker.pipeline import DEFAULT_SYSTEM_PROMPT
from worker.sentences import SentenceCutter

QUESTIONS = Path(__file__).resolve().parent / "questions.jsonl"
MAX_TOKENS = 80


@dataclass(frozen=True)
class Answer:
    """One reply: whether it holds a keyword, its tokens, and when it began, spoke and ended."""

    question: str
    reply: str
    right: bool
    tokens: int
    first_token_s: float
    first_sentence_s: float
    seconds: float


def load_questions(path: Path = QUESTIONS) -> list[dict[str, list[str] | str]]:
    """The questions, one JSON object a line: `question` and its keyword `answers`."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def holds_keyword(reply: str, keywords: list[str]) -> bool:
    """Whether `reply` holds one of `keywords` as whole words (digits' thousands commas dropped)."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", reply.lower())
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in keywords)


def ask(generator: LlamaCppGenerator, question: str, keywords: list[str], system: str) -> Answer:
    """Streams one reply to `question` and scores it."""
    cutter, started = SentenceCutter(), time.perf_counter()
    token: list[float] = []
    sentence: list[float] = []

    def on_delta(piece: str) -> None:
        token.append(time.perf_counter() - started)
        if not sentence and cutter.feed(piece):
            sentence.append(token[-1])

    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    reply = generator.generate(messages, max_tokens=MAX_TOKENS, temperature=0.0, on_delta=on_delta)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return Answer(
        question,
        reply.text,
        holds_keyword(reply.text, keywords),
        reply.completion_tokens,
        token[0] if token else seconds,
        sentence[0] if sentence else seconds,  # a reply of one unfinished sentence: its end
        seconds,
    )


def run_model(settings: Settings, system: str) -> list[Answer]:
    """Every question, asked of the model `settings` name."""
    generator = LlamaCppGenerator.from_settings(settings)
    generator.generate([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0)
    return [
        ask(generator, str(item["question"]), list(item["answers"]), system)
        for item in load_questions()
    ]


def installed_models(settings: Settings) -> list[Settings]:
    """The settings of each model to ask: each preset whose packages are installed, and
    `LLM_MODEL_PATH` when set."""
    models = [settings] if settings.llm_model_path else []
    for name in PRESETS:
        preset = settings.model_copy(
            update={"llm_model_path": "", "llm_model": "", "llm_preset": name}
        )
        try:
            llm_model_file(preset)
        except EngineUnavailable:
            continue
        models.append(preset)
    return models


def rows(system: str = DEFAULT_SYSTEM_PROMPT, show_misses: bool = False) -> list[Row]:
    """Score, tokens/s and time to first sentence of each installed model."""
    settings = Settings.from_env()
    table = []
    for model in installed_models(settings):
        name = llm_model_id(model)
        answers = run_model(model, system)
        right = sum(answer.right for answer in answers)
        decoding = sum(a.seconds - a.first_token_s for a in answers)
        tokens_per_s = sum(a.tokens - 1 for a in answers if a.tokens) / decoding
        bench = f"answers, {len(answers)} questions"
        table += [
            Row(bench, f"{name}: right", right, f"of {len(answers)}"),
            Row(bench, f"{name}: tokens/s after the first", tokens_per_s, "tok/s"),
            Row(bench, f"{name}: first token, median",
                statistics.median(a.first_token_s for a in answers) * 1000, "ms"),
            Row(bench, f"{name}: first sentence, median",
                statistics.median(a.first_sentence_s for a in answers) * 1000, "ms"),
        ]  # fmt: skip
        if show_misses:
            for answer in answers:
                if not answer.right:
                    print(f"{name} missed {answer.question!r}: {answer.reply!r}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="the system prompt")
    parser.add_argument("--show-misses", action="store_true", help="print each wrong reply")
    args = parser.parse_args()
    print(markdown(rows(args.system, args.show_misses)))


if __name__ == "__main__":
    main()
