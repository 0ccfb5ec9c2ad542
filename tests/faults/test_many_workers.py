"""Two workers on one broker and one database are as safe as one: a worker frozen past its lease,
or killed, mid-generation, while the other runs its job again.

Real processes and real signals (SIGSTOP/SIGCONT, SIGKILL to the pool child that holds the
job's lease), on SQLite and (with TEST_DATABASE_URL) PostgreSQL; the engines are the fast ones
made for these tests (`harness/engines.py`), with a paced reply and a reply WAV of random length.
"""

from __future__ import annotations

import io
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import soundfile as sf
from redis import Redis

from harness.stack import FAST_ENGINES, Stack
from models.event_log import key

pytestmark = pytest.mark.e2e

ENGINES = {
    **FAST_ENGINES,
    "LLM_ENGINE": "harness.engines:PacedGenerator",
    "TTS_ENGINE": "harness.engines:VaryingToneSynthesizer",
}
SLOW_PROMPT = "slow " + " ".join(f"word{i}" for i in range(14))  # about 4 s of reply


@pytest.fixture
def two_workers(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    stack = Stack(tmp_path, DATABASE_URL=database_url, **ENGINES)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker(1)
        stack.start_worker(2)
        yield stack
    finally:
        stack.close()


def _entries(stack: Stack, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    client = Redis(port=stack.redis_port)
    try:
        entries = client.xrange(key(job_id))
    finally:
        client.close()
    return [(i.decode(), raw[b"type"].decode(), json.loads(raw[b"data"])) for i, raw in entries]


def _events(stack: Stack, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, data) for _id, kind, data in _entries(stack, job_id)]


def _resumed_after(stack: Stack, job_id: str, event_id: str) -> requests.Response:
    url = f"{stack.url}/v1/jobs/{job_id}/events"
    return stack.http.get(url, headers={"Last-Event-ID": event_id}, timeout=30)


def _check_one_truth(stack: Stack, job_id: str) -> dict[str, Any]:
    """The row, the served WAV, the reply files and the event log agree, and both workers run."""
    job = stack.wait(job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job
    assert job["result"]["text"] == f"echo: {SLOW_PROMPT}"
    served = stack.http.get(stack.url + job["result"]["audio_url"], timeout=10)
    assert served.status_code == 200
    seconds = sf.info(io.BytesIO(served.content)).duration
    assert abs(seconds - job["result"]["audio_seconds"]) < 0.002, (seconds, job["result"])
    files = sorted(p.name for p in (stack.data_dir / "results").iterdir() if job_id in p.name)
    assert files == [f"{job_id}-2.wav"]
    events = _events(stack, job_id)
    assert [kind for kind, _ in events].count("done") == 1 and events[-1][0] == "done"
    statuses = [data for kind, data in events if kind == "status"]
    assert statuses == [
        {"status": "running", "attempt": 1},
        {"status": "queued", "attempt": 1},
        {"status": "running", "attempt": 2},
    ]
    # The second attempt's reply is whole in the log after its start: the first added nothing
    # once the job was queued again.
    restart = events.index(("status", {"status": "running", "attempt": 2}))
    rerun = "".join(data["text"] for kind, data in events[restart:] if kind == "delta")
    assert rerun.strip() == f"echo: {SLOW_PROMPT}"
    marker = events.index(("status", {"status": "queued", "attempt": 1}))
    assert all(kind != "delta" for kind, _ in events[marker + 1 : restart])
    # A reader resuming after `done` is told the stream ended (204: EventSource stops);
    # one resuming before it gets the rest, `done` last.
    ids = [event_id for event_id, _kind, _data in _entries(stack, job_id)]
    assert _resumed_after(stack, job_id, ids[-1]).status_code == 204
    rest = _resumed_after(stack, job_id, ids[-2])
    assert rest.status_code == 200 and rest.text.count("event: done") == 1
    for index, worker in stack.workers.items():
        assert worker.poll() is None, f"worker {index} exited"
    return job


def _log_says(stack: Stack, text: str) -> Callable[[], bool]:
    return lambda: any(text in log.read_text() for log in stack.data_dir.glob("worker-*.log"))


def test_a_worker_frozen_past_its_lease_then_thawed_changes_nothing(two_workers: Stack) -> None:
    stack = two_workers
    job_id = stack.submit(json={"text": SLOW_PROMPT, "reply": "voice"})
    child = stack.generating_child(job_id, SLOW_PROMPT)
    os.kill(child, signal.SIGSTOP)
    try:
        # Its lease lapses; the reconciler releases the job and the other worker runs it again.
        stack._until(lambda: stack.job(job_id)["status"] == "succeeded", "the rerun to finish")
    finally:
        os.kill(child, signal.SIGCONT)
    # Thawed, the stale attempt finds its lease lost at its next word and stops there.
    stack._until(_log_says(stack, f"job lease lost job_id={job_id} attempt=1"), "the stale stop")
    _check_one_truth(stack, job_id)
    lines = (stack.data_dir / "paced-generations.log").read_text().splitlines()
    runs = [line.split("\t")[:2] for line in lines if line.endswith(SLOW_PROMPT)]
    assert runs.count(["start", str(child)]) == 1 and ["end", str(child)] not in runs
    assert [what for what, _pid in runs].count("end") == 1
    assert stack.ready_workers() == 2


def test_a_worker_killed_mid_generation_changes_nothing(two_workers: Stack) -> None:
    stack = two_workers
    job_id = stack.submit(json={"text": SLOW_PROMPT, "reply": "voice"})
    child = stack.generating_child(job_id, SLOW_PROMPT)
    os.kill(child, signal.SIGKILL)
    # Its parent sees the child die, releases the job and publishes it again.
    _check_one_truth(stack, job_id)
    stack._until(lambda: stack.ready_workers() >= 2, "the parent's new child to be ready")


def test_a_streaming_client_gets_an_error_not_the_same_text_twice(two_workers: Stack) -> None:
    stack = two_workers
    model = stack.http.get(f"{stack.url}/v1/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": SLOW_PROMPT}]}
    url = f"{stack.url}/v1/chat/completions"
    frames: list[str] = []
    with stack.http.post(url, json=body, stream=True, timeout=120) as answer:
        assert answer.status_code == 200, answer.text
        job_id = answer.headers["X-Job-Id"]
        lines = (line for line in answer.iter_lines(decode_unicode=True) if line)
        for line in lines:
            frames.append(line.removeprefix("data: "))
            if '"content":"echo:' in line:  # the first words reached the client: kill now
                os.kill(stack.generating_child(job_id, SLOW_PROMPT), signal.SIGKILL)
                break
        frames.extend(line.removeprefix("data: ") for line in lines)
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert frames[-1] == "[DONE]"
    assert chunks[-1]["error"]["code"] == "worker_lost", chunks[-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if "choices" in c)
    assert text and f"echo: {SLOW_PROMPT}".startswith(text), text  # never the start twice
    job = stack.wait(job_id)  # the job itself goes on and succeeds on its second attempt
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
