"""The `voicechat` command as a user runs it: the installed script against a running service.

The service is Redis, gunicorn and a Celery worker on the plumbing fakes of harness/engines.py
(named as such): the subject is the client, so replies come at once, or word by word every
0.25 s for prompts that start with "slow" (the paced echo), so a test can interrupt one.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harness.stack import FAST_ENGINES, Stack, free_port
from tests.access.test_api_keys import created
from tests.conftest import tone, wav_bytes

pytestmark = pytest.mark.e2e

VOICECHAT = Path(sys.executable).with_name("voicechat")  # installed by scripts/bootstrap.sh
JOB_LINE = re.compile(r"^voicechat: job ([0-9a-f]{32}) queued$", re.MULTILINE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engines = {**FAST_ENGINES, "LLM_ENGINE": "harness.engines:PacedGenerator"}
    with Stack(tmp_path_factory.mktemp("cli"), **engines).serving() as stack:
        yield stack


def _env(service: Stack | str) -> dict[str, str]:
    """The command's environment for a stack (its URL and its key) or a bare URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    if isinstance(service, str):
        return {**env, "VOICECHAT_URL": service}
    return {**env, "VOICECHAT_URL": service.url, "VOICECHAT_API_KEY": service.secret}


def voicechat(
    service: Stack | str, *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs the installed command against `service`, its stdout and stderr pipes (not a
    terminal)."""
    assert VOICECHAT.exists(), "scripts/bootstrap.sh installs the voicechat command"
    return subprocess.run(
        [str(VOICECHAT), *args],
        env=_env(service),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _job_id(stderr: str) -> str:
    found = JOB_LINE.search(stderr)
    assert found, stderr
    return found[1]


def _stages(stderr: str) -> list[str]:
    return re.findall(r"^voicechat: (\w+) \(\d+\.\d s\)$", stderr, re.MULTILINE)


def test_a_typed_question_gets_its_text_reply_on_stdout(stack: Stack) -> None:
    done = voicechat(stack, "ask", "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: What is the capital of France?\n"
    job = stack.job(_job_id(done.stderr))
    assert job["status"] == "succeeded" and job["reply"] == "text"
    assert job["result"]["text"] == done.stdout.strip()
    # Progress is on stderr, one plain line a stage (stderr is no terminal here).
    assert _stages(done.stderr) == ["queued", "generating"]
    assert "\r" not in done.stderr and "\033" not in done.stderr

    shown = voicechat(stack, "job", job["id"])
    assert shown.returncode == 0 and json.loads(shown.stdout) == stack.job(job["id"])
    finished = voicechat(stack, "cancel", job["id"])
    assert finished.returncode == 4
    assert finished.stderr.startswith("voicechat: HTTP 409 job_finished: ")


def test_a_recording_gets_a_spoken_reply_saved_as_a_wav(stack: Stack, tmp_path: Path) -> None:
    question = tmp_path / "question.wav"
    question.write_bytes(wav_bytes(tone(1.0, 16_000), 16_000))
    done = voicechat(stack, "ask", "--audio", str(question), "-o", "reply.wav", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: instant transcript\n"
    assert "voicechat: heard: instant transcript\n" in done.stderr
    assert _stages(done.stderr) == ["queued", "transcribing", "generating", "synthesizing"]
    assert f"reply audio saved to {Path('reply.wav')}" in done.stderr

    # The file is the stored reply, sample for sample, with its sizes written in.
    saved, rate = sf.read(tmp_path / "reply.wav", dtype="int16")
    job_id = _job_id(done.stderr)
    stored = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio", timeout=10)
    expected, expected_rate = sf.read(io.BytesIO(stored.content), dtype="int16")
    assert rate == expected_rate == 16_000 and np.array_equal(saved, expected)
    assert len(saved) == 8_000  # one sentence: half a second of tone
    assert (tmp_path / "reply.wav").read_bytes() == stored.content

    # An existing file is kept unless --force says otherwise; nothing is submitted.
    jobs_before = len(stack.http.get(f"{stack.url}/v1/jobs?limit=100", timeout=10).json()["data"])
    again = voicechat(stack, "ask", "Hello.", "-o", "reply.wav", cwd=tmp_path)
    assert again.returncode == 2 and "reply.wav exists: --force overwrites it" in again.stderr
    assert (tmp_path / "reply.wav").read_bytes() == stored.content
    jobs_after = len(stack.http.get(f"{stack.url}/v1/jobs?limit=100", timeout=10).json()["data"])
    assert jobs_after == jobs_before
    forced = voicechat(stack, "ask", "Hello there.", "-o", "reply.wav", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert _stages(forced.stderr) == ["queued", "generating", "synthesizing"]
    assert sf.info(str(tmp_path / "reply.wav")).frames == 8_000


def test_the_spoken_reply_is_written_while_it_is_made(stack: Stack, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(VOICECHAT), "ask", "slow One. Two. Three. Four. Five. Six.", "-o", "reply.wav"],
        env=_env(stack),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        job_id = _job_id(process.stderr.readline())
        partial_while_running = False
        while process.poll() is None and not partial_while_running:
            path = tmp_path / "reply.wav"
            one_sentence = 44 + 2 * 8_000  # the header and half a second of 16-bit tone
            if path.exists() and path.stat().st_size >= one_sentence:
                partial_while_running = stack.job(job_id)["status"] == "running"
            time.sleep(0.05)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out == "echo: slow One. Two. Three. Four. Five. Six.\n"
    assert partial_while_running, "the file grew only once the job had ended"
    stored = stack.http.get(f"{stack.url}/v1/jobs/{job_id}/audio", timeout=10)
    assert (tmp_path / "reply.wav").read_bytes() == stored.content
    assert sf.info(str(tmp_path / "reply.wav")).frames == 6 * 8_000


def test_a_conversation_is_followed_over_two_questions(stack: Stack) -> None:
    first = voicechat(stack, "ask", "--new-conversation", "My name is Ada.")
    assert first.returncode == 0, first.stderr
    reuse = r"conversation ([0-9a-f]{32}) \(continue it with --conversation \1\)"
    found = re.search(reuse, first.stderr)
    assert found, first.stderr
    conversation_id = found[1]

    second = voicechat(stack, "ask", "--conversation", conversation_id, "What is my name?")
    assert second.returncode == 0, second.stderr
    job = stack.job(_job_id(second.stderr))
    assert job["conversation_id"] == conversation_id

    answer = stack.http.get(f"{stack.url}/v1/conversations/{conversation_id}", timeout=10)
    turns = [(turn["role"], turn["content"]) for turn in answer.json()["turns"]]
    assert turns == [
        ("user", "My name is Ada."),
        ("assistant", "echo: My name is Ada."),
        ("user", "What is my name?"),
        ("assistant", "echo: What is my name?"),
    ]


def test_chat_answers_each_line_in_one_conversation(stack: Stack) -> None:
    done = subprocess.run(
        [str(VOICECHAT), "chat"],
        env=_env(stack),
        input="My name is Ada.\nWhat is my name?\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: My name is Ada.\necho: What is my name?\n"
    found = re.search(r"^voicechat: conversation ([0-9a-f]{32});", done.stderr, re.MULTILINE)
    assert found, done.stderr
    answer = stack.http.get(f"{stack.url}/v1/conversations/{found[1]}", timeout=10)
    assert [turn["role"] for turn in answer.json()["turns"]] == ["user", "assistant"] * 2


def test_ctrl_c_cancels_the_running_job_and_exits_130(stack: Stack) -> None:
    words = " ".join(f"word{n}" for n in range(200))  # 50 s of paced echo
    process = subprocess.Popen(
        [str(VOICECHAT), "ask", f"slow {words}"],
        env=_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    try:
        assert process.stderr is not None
        while "voicechat: generating" not in seen:
            line = process.stderr.readline()
            assert line, f"voicechat ended early: {seen}"
            seen += line
        time.sleep(1.5)  # a few words of the reply streamed
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, seen + err
    job_id = _job_id(seen)
    assert f"interrupted: job {job_id} canceled (its worker is stopping)" in err
    job = stack.wait(job_id, timeout=60)
    assert job["status"] == "canceled" and job["error"]["code"] == "canceled"
    # The words streamed before the interrupt, on their own line; the job kept them too.
    assert out.startswith("echo: slow word0") and out.endswith("\n") and "word199" not in out
    assert job["result"]["text"].startswith(out.strip())
    again = voicechat(stack, "cancel", job_id)
    assert again.returncode == 0 and again.stdout == f"{job_id} canceled\n"


def test_a_terminal_shows_one_progress_line(stack: Stack) -> None:
    """With stderr a terminal (a pseudo-terminal here), the stage is redrawn on one line."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [str(VOICECHAT), "ask", "--reply", "voice", "Hello."],
            env=_env(stack),
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0 and done.stdout == "echo: Hello.\n"
    text = shown.decode()
    for stage in ("queued", "generating", "synthesizing"):
        assert f"\r\033[Kvoicechat: {stage} (" in text
    # Stages are redrawn in place, never a line each.
    assert not re.search(r"voicechat: (queued|generating|synthesizing) \(\d+\.\d s\)\r?\n", text)


def test_a_wrong_api_key_is_refused_with_the_problems_words(tmp_path: Path) -> None:
    stack = Stack(tmp_path, **FAST_ENGINES)
    try:
        stack.start_redis()
        secret = created(stack.env, "cli")["secret"]
        stack.start_api()
        stack.start_worker()
        wrong = voicechat(stack, "--api-key", "vc_not-a-key", "ask", "Hello.")
        assert wrong.returncode == 4, wrong.stderr
        assert wrong.stderr == (
            "voicechat: HTTP 401 invalid_api_key: The API key is unknown or revoked.\n"
        )
        assert wrong.stdout == ""

        env_key = subprocess.run(
            [str(VOICECHAT), "ask", "Hello."],
            env={**_env(stack), "VOICECHAT_API_KEY": secret},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert env_key.returncode == 0, env_key.stderr
        assert env_key.stdout == "echo: Hello.\n" and secret not in env_key.stderr
    finally:
        stack.close()


def test_no_service_is_explained() -> None:
    done = voicechat(f"http://127.0.0.1:{free_port()}", "ask", "Hello.")
    assert done.returncode == 3
    assert "connection refused. Is the service running?" in done.stderr


def test_wrong_usage_is_refused_before_any_request(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # a request would exit 3, not 2
    (tmp_path / "question.wav").write_bytes(wav_bytes(tone(0.5, 16_000), 16_000))
    cases = {
        ("ask",): "give the prompt as text or as --audio FILE",
        ("ask", "Hi.", "--audio", "question.wav"): "give the prompt as text or as --audio FILE",
        ("ask", "--audio", "missing.wav"): "cannot read missing.wav",
        ("ask", "Hi.", "--reply", "text", "-o", "reply.wav"): "-o saves a spoken reply",
        ("ask", "Hi.", "--conversation", "x", "--new-conversation"): "not allowed with",
    }
    for args, message in cases.items():
        done = voicechat(nowhere, *args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert not (tmp_path / "reply.wav").exists()


def test_a_wait_too_long_and_a_full_queue_are_told_apart(tmp_path: Path) -> None:
    """No worker: a job waits in the queue, and with MAX_QUEUE_DEPTH=1 the next is refused."""
    stack = Stack(tmp_path, **FAST_ENGINES, MAX_QUEUE_DEPTH="1")
    try:
        stack.start_redis()
        stack.start_api()
        waited = voicechat(stack, "--timeout", "2", "ask", "Hello.")
        assert waited.returncode == 6, waited.stderr
        job_id = _job_id(waited.stderr)
        assert f"no reply within 2 s; job {job_id} goes on" in waited.stderr
        assert stack.job(job_id)["status"] == "queued"

        busy = voicechat(stack, "ask", "Hello again.")
        assert busy.returncode == 5, busy.stderr
        assert re.fullmatch(
            r"voicechat: HTTP 503 queue_full: .+ \(try again in \d+ s\)\n", busy.stderr
        ), busy.stderr
    finally:
        stack.close()
