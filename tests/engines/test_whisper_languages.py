"""The API's copy of Whisper's languages equals the installed recognisers' own lists."""

from __future__ import annotations

import pytest

from models.whisper_languages import WHISPER_LANGUAGES


def test_the_copy_is_faster_whispers_list() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert tuple(_LANGUAGE_CODES) == WHISPER_LANGUAGES


def test_the_copy_is_openai_whispers_list() -> None:
    tokenizer = pytest.importorskip(
        "whisper.tokenizer",
        reason="openai-whisper is not installed (scripts/bootstrap.sh --engines adds it)",
    )
    assert sorted(WHISPER_LANGUAGES) == sorted(tokenizer.LANGUAGES)
