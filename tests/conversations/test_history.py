"""A conversation's history fitted to the model's window (fake engines, named as such): the
oldest turns dropped first, never an orphaned answer, room left for the reply."""

from __future__ import annotations

import pytest

from models.errors import ContextLengthExceeded
from models.settings import Settings
from models.tables import ReplyFormat
from tests.jobs.test_pipeline import FakeGenerator, Recorder, _pipeline
from worker.engines import Message
from worker.pipeline import JobInput, fit_to_context


def _turns(count: int, words: int) -> list[Message]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join([f"w{i}"] * words)}
        for i in range(count)
    ]


def test_history_is_trimmed_oldest_first_to_leave_room_for_the_reply() -> None:
    generator = FakeGenerator(context_tokens=100)
    history = _turns(10, 10)  # 140 tokens: more than the window on its own
    prompt: Message = {"role": "user", "content": "now"}
    head: list[Message] = [{"role": "system", "content": "be brief"}]
    kept = fit_to_context(generator, head, history, prompt, max_tokens=30)
    assert kept[0] == head[0] and kept[-1] == prompt
    assert generator.count_tokens(kept) <= 100 - 30
    middle = kept[1:-1]
    assert middle == history[-len(middle) :]  # the newest turns, in order
    assert middle[0]["role"] == "user"  # never opens with an orphaned answer
    # One more turn would not have fitted (the cut is as late as it must be, no later).
    wider = [*head, *history[-len(middle) - 2 :], prompt]
    assert generator.count_tokens(wider) > 100 - 30


def test_history_that_fits_is_kept_whole() -> None:
    generator = FakeGenerator(context_tokens=2048)
    history = _turns(6, 5)
    prompt: Message = {"role": "user", "content": "now"}
    assert fit_to_context(generator, [], history, prompt, 100) == [*history, prompt]


def test_a_prompt_too_long_for_the_window_alone_is_refused() -> None:
    generator = FakeGenerator(context_tokens=100)
    prompt: Message = {"role": "user", "content": " ".join(["x"] * 80)}
    with pytest.raises(ContextLengthExceeded, match="84 tokens"):
        fit_to_context(generator, [], _turns(4, 3), prompt, max_tokens=30)


def test_a_long_conversation_keeps_answering(settings: Settings) -> None:
    generator = FakeGenerator(answer="Fine.", context_tokens=300)
    pipeline = _pipeline(settings, generator)
    history: list[Message] = []
    for turn in range(40):
        prompt = f"turn {turn} " + "words " * 30
        outcome = pipeline.run(
            JobInput(job_id="j", reply=ReplyFormat.TEXT, text=prompt, history=tuple(history)),
            Recorder(),
        )
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Fine."}]
        sent = generator.calls[-1]["messages"]
        assert generator.count_tokens(sent) <= 300 - settings.default_max_tokens
        assert outcome.reply_text == "Fine."
    assert generator.count_tokens(history) > 5 * 300  # the whole chat, five windows long
