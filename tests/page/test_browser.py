"""The voice chat page (`/`) in a real browser: Debian's chromium driven by Playwright, with the
spoken test question played into its microphone (Chromium's fake capture device).

Against the service started as the README says, with the real engines: a question spoken by
holding the talk button comes back transcribed with its spoken reply played, and a typed
follow-up is answered in the same server-kept conversation; a refused question shows its
problem, and a silent recording's failed job its `no_speech`. Against a keyed stack with the
fake engines (the plumbing): the API-key field, 401, 429, a spoken reply streamed with a key and
a question recorded with the keyboard. Screenshots go to the test's folder, and also to
SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from harness.stack import FAST_ENGINES, Stack
from models.settings import Settings
from tests.access.test_api_keys import created
from tests.conftest import Service, wav_bytes

CHROMIUM = Path("/usr/bin/chromium")


def _missing() -> str:
    if not CHROMIUM.exists():
        return "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (requirements-dev.txt)"
    return ""


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(_missing()), reason=_missing())]

# The fake microphone opens with silence (the capture starts when the page asks for the
# microphone, a moment before it records) and ends with some, so the release is not mid-word.
LEAD_SECONDS = 1.0
TAIL_SECONDS = 1.5
# Seconds to wait for a job on the real engines, on a machine that other tests load.
JOB_TIMEOUT_MS = 240_000
FINISHED = ".turn[data-state=succeeded], .turn[data-state=failed], .turn[data-state=canceled]"


@dataclass(frozen=True)
class Microphone:
    """The WAV Chromium plays as its microphone, and when the question in it ends."""

    path: Path
    speech_ends: float


@pytest.fixture(scope="module")
def microphone(question_wav: bytes, tmp_path_factory: pytest.TempPathFactory) -> Microphone:
    """The spoken question between silences, as the 16-bit PCM WAV Chromium's capture reads."""
    samples, rate = sf.read(io.BytesIO(question_wav), dtype="float32")
    lead, tail = np.zeros(int(LEAD_SECONDS * rate)), np.zeros(int(TAIL_SECONDS * rate))
    path = tmp_path_factory.mktemp("microphone") / "question.wav"
    path.write_bytes(wav_bytes(np.concatenate([lead, samples, tail]), rate))
    return Microphone(path, LEAD_SECONDS + len(samples) / rate)


@pytest.fixture(scope="module")
def browser(microphone: Microphone) -> Iterator[Any]:
    """Debian's chromium, headless, its microphone the question (played once per capture:
    `%noloop`), without any network of its own beyond the pages it is sent to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone.path}%noloop",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


class Screenshots:
    """Saves screenshots into the test's folder, and into SCREENSHOT_DIR when it is set."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str) -> Path:
        path = self.folder / f"{self.prefix}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path


@pytest.fixture
def screenshots(tmp_path: Path, request: pytest.FixtureRequest) -> Screenshots:
    return Screenshots(tmp_path / "screenshots", request.node.name.removeprefix("test_"))


class ChatPage:
    """A browser tab on the page, with what the tests read of it."""

    def __init__(self, browser: Any, url: str, key: str = "") -> None:
        """Opens the page; with `key`, as a user who entered that API key in this tab."""
        self.context = browser.new_context(viewport={"width": 960, "height": 900})
        self.context.grant_permissions(["microphone"], origin=url)
        if key:
            self.context.add_init_script(
                f"sessionStorage.setItem('voicechat.apiKey', {json.dumps(key)})"
            )
        self.page = self.context.new_page()
        self.failures: list[str] = []  # uncaught exceptions and Content-Security-Policy refusals
        self.page.on("pageerror", lambda error: self.failures.append(str(error)))
        self.page.on(
            "console",
            lambda message: (
                self.failures.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        self.page.goto(url + "/")
        self.page.wait_for_selector("html[data-ready=true]")

    def turn(self, number: int) -> Any:
        return self.page.locator(".turn").nth(number - 1)

    def finished(self, number: int, timeout: float = JOB_TIMEOUT_MS) -> Any:
        """Waits until turn `number` has ended; returns it."""
        self.page.wait_for_selector(f":is({FINISHED}):nth-child({number})", timeout=timeout)
        return self.turn(number)

    def hold_to_talk(self, seconds: float) -> None:
        """Holds the talk button down with the mouse for `seconds`, then lets go."""
        box = self.page.locator("#talk").bounding_box()
        self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        self.page.mouse.down()
        self.page.wait_for_timeout(seconds * 1000)
        self.page.mouse.up()

    def ask(self, text: str, reply: str) -> None:
        """Types a question and sends it with Enter, the reply chosen by keyboard."""
        self.page.locator(f"input[name=reply][value={reply}]").check()
        self.page.locator("#prompt").fill(text)
        self.page.locator("#prompt").press("Enter")

    def alert(self) -> str:
        """The alert's text once it shows one."""
        self.page.wait_for_selector("#alert p", timeout=60_000)
        return str(self.page.locator("#alert").inner_text())

    def close(self) -> None:
        self.context.close()
        assert not self.failures, self.failures


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_a_spoken_question_and_a_typed_follow_up(
    browser: Any, service: Service, microphone: Microphone, screenshots: Screenshots
) -> None:
    chat = ChatPage(browser, service.url, service.secret)
    # Spoken: hold the button for the question, then hear the reply as it streams.
    chat.hold_to_talk(microphone.speech_ends + TAIL_SECONDS)
    spoken = chat.finished(1)
    assert spoken.get_attribute("data-state") == "succeeded", spoken.inner_text()
    transcript = spoken.locator(".prompt-text").inner_text()
    assert {"capital", "france"} <= _words(transcript), transcript
    assert spoken.locator(".reply-text").inner_text().strip()
    # Each stage, from the job's events, in order; the reply came as several deltas.
    stages = "queued transcribing generating synthesizing"
    assert spoken.get_attribute("data-stages-seen") == stages
    assert int(spoken.get_attribute("data-deltas") or 0) > 1
    # The whole spoken reply reached the page's player, and its WAV is offered.
    job = service.http.get(f"{service.url}/v1/jobs/{spoken.get_attribute('data-job-id')}").json()
    info = spoken.locator(".audio-info")
    played = float(info.get_attribute("data-audio-seconds") or 0)
    assert played == pytest.approx(job["result"]["audio_seconds"], abs=0.01)
    samples = int(info.get_attribute("data-audio-bytes") or 0) / 2  # 16-bit
    assert samples / job["result"]["audio_seconds"] == pytest.approx(22_050, rel=0.01)
    assert spoken.locator("a.download").get_attribute("href").startswith("blob:")
    # And it was played through to its end by the page's AudioContext.
    chat.page.wait_for_function(
        "(seconds) => Number(document.querySelector('.audio-info').dataset.audioPlayed) >= seconds",
        arg=played - 0.01,
        timeout=30_000,
    )
    screenshots.take(chat.page, "spoken")

    # Typed, with a written reply, in the same conversation.
    chat.ask("Tell me one thing it is famous for.", reply="text")
    typed = chat.finished(2)
    assert typed.get_attribute("data-state") == "succeeded", typed.inner_text()
    assert typed.locator(".reply-text").inner_text().strip()
    assert typed.locator(".audio-info").is_hidden()
    assert typed.get_attribute("data-stages-seen") == "queued generating"
    conversation_id = chat.page.evaluate("sessionStorage.getItem('voicechat.conversationId')")
    conversation = service.http.get(f"{service.url}/v1/conversations/{conversation_id}").json()
    roles = [turn["role"] for turn in conversation["turns"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert conversation["turns"][0]["content"] == transcript
    screenshots.take(chat.page, "conversation")
    chat.close()


def test_a_refused_question_and_a_failed_job_are_shown(
    browser: Any, service: Service, engine_settings: Settings, screenshots: Screenshots
) -> None:
    chat = ChatPage(browser, service.url, service.secret)
    too_long = "a" * (engine_settings.max_text_chars + 1)
    chat.ask(too_long, reply="text")
    alert = chat.alert()
    assert "text_too_long" in alert and str(engine_settings.max_text_chars) in alert, alert
    # No turn is left for it, and the question is back in the box to be mended.
    assert chat.page.locator(".turn").count() == 0
    assert chat.page.locator("#prompt").input_value() == too_long
    screenshots.take(chat.page, "refused")

    # Let go before the question starts: the silence is sent, and its job fails.
    chat.hold_to_talk(LEAD_SECONDS * 0.7)
    silent = chat.finished(1)
    assert silent.get_attribute("data-state") == "failed", silent.inner_text()
    alert = chat.alert()
    assert "No speech was heard" in alert and "no_speech" in alert, alert
    assert "No speech was heard" in silent.locator(".note").inner_text()
    screenshots.take(chat.page, "no-speech")
    chat.close()


@pytest.fixture
def keyed_stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis, the API and a worker with the fast fake engines, and API keys made before the
    API starts (so it runs keyed from its first request)."""
    stack = Stack(tmp_path, **FAST_ENGINES)
    try:
        stack.start_redis()
        yield stack
    finally:
        stack.close()


def test_api_keys_and_limits_in_the_page(
    browser: Any, keyed_stack: Stack, screenshots: Screenshots
) -> None:
    key = created(keyed_stack.env, "page")["secret"]
    # One request a minute: the conversation is made, and the question is refused.
    limited = created(keyed_stack.env, "limited", "--requests-per-minute", "1")["secret"]
    keyed_stack.start_api()
    keyed_stack.start_worker()
    chat = ChatPage(browser, keyed_stack.url)

    chat.ask("Hello there", reply="voice")
    assert "needs an API key" in chat.alert() and "missing_api_key" in chat.alert()
    assert chat.page.locator("#key-panel").get_attribute("open") is not None

    def use_key(secret: str) -> None:
        chat.page.locator("#api-key").fill(secret)
        chat.page.locator("#api-key").press("Enter")
        chat.page.locator("#send").click()

    use_key("vc_not_a_key")
    assert "was refused" in chat.alert() and "invalid_api_key" in chat.alert()

    use_key(limited)
    alert = chat.alert()
    assert "rate_limited" in alert and re.search(r"Retry-After: \d+ s", alert), alert
    screenshots.take(chat.page, "limited")

    # The right key: the conversation the limited key made is not this key's, so a new one
    # is started; the events and the audio are read with the key too.
    use_key(key)
    turn = chat.finished(1, timeout=60_000)
    assert turn.get_attribute("data-state") == "succeeded", turn.inner_text()
    assert turn.locator(".reply-text").inner_text() == "echo: Hello there"
    info = turn.locator(".audio-info")
    assert float(info.get_attribute("data-audio-seconds") or 0) == pytest.approx(0.5, abs=0.01)
    chat.page.wait_for_function(
        "() => Number(document.querySelector('.audio-info').dataset.audioPlayed) >= 0.49"
    )
    assert chat.page.evaluate("sessionStorage.getItem('voicechat.apiKey')") == key

    # Without a mouse: hold Space on the focused talk button for 1.5 s.
    chat.page.locator("input[name=reply][value=text]").check()
    chat.page.locator("#talk").focus()
    chat.page.keyboard.down(" ")
    chat.page.wait_for_timeout(1500)
    chat.page.keyboard.up(" ")
    spoken = chat.finished(2, timeout=60_000)
    assert spoken.get_attribute("data-state") == "succeeded", spoken.inner_text()
    assert spoken.locator(".prompt-text").inner_text() == "instant transcript"  # the fake's
    seconds = float(re.findall(r"spoken, ([0-9.]+) s", spoken.locator(".how").inner_text())[0])
    assert 1.2 < seconds < 2.5
    screenshots.take(chat.page, "keyed")
    chat.close()


def test_a_busy_service_is_read_instead_of_followed(
    browser: Any, tmp_path: Path, screenshots: Screenshots
) -> None:
    # No place for any event or audio stream: every follower gets 503 `server_busy`.
    with Stack(tmp_path, MAX_HELD_REQUESTS="0", **FAST_ENGINES).serving() as stack:
        assert stack.status_of(f"/v1/jobs/{'0' * 32}/events") == 503
        chat = ChatPage(browser, stack.url, stack.secret)
        chat.ask("Hello there", reply="voice")
        turn = chat.finished(1, timeout=60_000)
        assert turn.get_attribute("data-state") == "succeeded", turn.inner_text()
        assert turn.locator(".reply-text").inner_text() == "echo: Hello there"
        # The finished reply's stored audio is not a held stream: it is played all the same.
        info = turn.locator(".audio-info")
        assert float(info.get_attribute("data-audio-seconds") or 0) == pytest.approx(0.5, abs=0.01)
        assert chat.page.locator("#alert").inner_text() == ""
        screenshots.take(chat.page, "polled")
        chat.close()


def test_a_reply_is_stopped_and_what_it_said_stays(
    browser: Any, tmp_path: Path, screenshots: Screenshots
) -> None:
    # A generator that says one word every 0.25 s, for prompts that start with "slow".
    engines = {**FAST_ENGINES, "LLM_ENGINE": "harness.engines:PacedGenerator"}
    with Stack(tmp_path, **engines).serving() as stack:
        chat = ChatPage(browser, stack.url, stack.secret)
        stop = chat.page.locator("#stop")
        assert stop.is_hidden()
        chat.ask("slow " + " ".join(f"word{n}" for n in range(40)), reply="voice")
        reply = chat.turn(1).locator(".reply-text")
        chat.page.wait_for_function(
            "() => document.querySelector('.turn .reply-text').textContent.includes('slow')"
        )
        stop.click()
        turn = chat.finished(1, timeout=60_000)
        assert turn.get_attribute("data-state") == "canceled", turn.inner_text()
        assert "Stopped" in turn.locator(".note").inner_text()
        assert turn.get_attribute("data-stopped") == "true"
        assert turn.locator(".stages li.stopped").inner_text() == "Generating"
        assert chat.page.locator("#alert").inner_text() == ""  # asked for: not an error
        assert stop.is_hidden()
        job = stack.job(str(turn.get_attribute("data-job-id")))
        assert (job["status"], job["error"]["code"]) == ("canceled", "canceled")
        # What the page shows is what the job kept: the words said before the stop.
        kept = job["result"]["text"]
        assert kept.startswith("echo: slow") and "word39" not in kept
        assert reply.inner_text().strip() == kept.strip()
        screenshots.take(chat.page, "stopped")
        chat.close()
