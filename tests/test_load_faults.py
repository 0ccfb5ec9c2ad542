"""Load under faults: 2,000 submissions while the worker is SIGKILLed several times.

Every job must end, none twice, none lost. The engines are the fast ones made for this test
(`tests/engines.py`): the subject is the delivery plumbing, not the models. The figures are
printed and kept in `load-figures.txt` in the test's folder (the README quotes a run).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.stack import FAST_ENGINES, Stack

pytestmark = pytest.mark.e2e

SUBMISSIONS = 2000
KILLS = 4


def test_every_job_ends_exactly_once_through_worker_kills(tmp_path: Path) -> None:
    stack = Stack(tmp_path, **{**FAST_ENGINES, "LLM_ENGINE": "tests.engines:CountingGenerator"})
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker()
        started = time.monotonic()
        submitted: list[str] = []
        done_submitting = threading.Event()

        def submit(index: int) -> str:
            return stack.submit(json={"text": f"load {index}", "max_tokens": 5})

        def submit_all() -> None:
            with ThreadPoolExecutor(max_workers=6) as pool:
                submitted.extend(pool.map(submit, range(SUBMISSIONS)))
            done_submitting.set()

        submitter = threading.Thread(target=submit_all)
        submitter.start()
        for _ in range(KILLS):
            time.sleep(4)
            stack.kill_worker(signal.SIGKILL)
            stack.start_worker()
        submitter.join(timeout=600)
        assert done_submitting.is_set()
        submit_s = time.monotonic() - started

        seen: dict[str, dict] = {}  # type: ignore[type-arg]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            seen = {}
            cursor = None
            while True:
                params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                page = stack.http.get(f"{stack.url}/v1/jobs", params=params, timeout=30).json()
                seen.update((job["id"], job) for job in page["data"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            if all(job["status"] in ("succeeded", "failed", "canceled") for job in seen.values()):
                break
            time.sleep(2)
        total_s = time.monotonic() - started
    finally:
        stack.close()

    assert len(submitted) == len(set(submitted)) == SUBMISSIONS
    assert set(seen) == set(submitted), "a job was lost or one appeared from nowhere"
    statuses = Counter(job["status"] for job in seen.values())
    assert statuses == {"succeeded": SUBMISSIONS}, statuses
    prompts = {job["id"]: job["input"]["text"] for job in seen.values()}
    assert all(job["result"]["text"] == f"echo: {prompts[job['id']]}" for job in seen.values())
    attempts = Counter(job["attempts"] for job in seen.values())
    generations = Counter(
        line for line in (tmp_path / "generations.log").read_text().splitlines() if line != "Hi"
    )
    rerun = sum(count - 1 for count in generations.values())
    assert set(generations) == {f"load {i}" for i in range(SUBMISSIONS)}
    figures = (
        f"{SUBMISSIONS} jobs, {KILLS} SIGKILLs of the worker: all succeeded, 0 lost, "
        f"0 duplicated; attempts {dict(sorted(attempts.items()))}; "
        f"{rerun} generations re-run after a kill; submitted in {submit_s:.1f} s, "
        f"all finished in {total_s:.1f} s ({SUBMISSIONS / total_s:.0f} jobs/s)"
    )
    print(figures)
    (tmp_path / "load-figures.txt").write_text(figures + "\n")
