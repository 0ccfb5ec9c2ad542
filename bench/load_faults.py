"""Load under faults, counted: two workers, N jobs, pool children SIGKILLed and frozen
(SIGSTOP past their lease, then SIGCONT) while they run a job, and a Redis restart.

Run: `.venv/bin/python -m bench.load_faults [--jobs 2000] [--kills 4] [--freezes 4]
[--database-url URL]` (SQLite in a temporary folder without `--database-url`). The load figures
in docs/operations.md come from this command; `tests/faults/test_load_faults.py` runs it at a
size CI can afford.

Each fault is aimed: a slow job is submitted among the others, and the signal goes to the pool
child whose lease the job's row names, once the job is generating. Everything is counted, per
job, after the run: exactly one terminal state, exactly one `done` event and nothing after it,
the served WAV the one the row describes (its length; the test engine makes every WAV a random
length), and generations run again equal to generations a fault interrupted (each generation
logs its start and end with its process id). The engines are the fast ones in
`harness/engines.py`: the subject is delivery, not the models.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from redis import Redis

from harness.stack import FAST_ENGINES, Stack
from models.event_log import key
from models.transitions import TERMINAL

_LOGGER = logging.getLogger("bench.load_faults")

ENGINES = {
    **FAST_ENGINES,
    "LLM_ENGINE": "harness.engines:PacedGenerator",
    "TTS_ENGINE": "harness.engines:VaryingToneSynthesizer",
    # The load is all one caller's, submitted at once: no per-caller share, no queue bound.
    "MAX_UNFINISHED_JOBS": "0",
    "MAX_QUEUE_DEPTH": "0",
}


@dataclass
class Hit:
    """One aimed fault: the signal, the job it hit, the child that held the job."""

    fault: str
    job_id: str
    pid: int


@dataclass
class Figures:
    """What one run counted."""

    accepted: list[str] = field(default_factory=list)  # 202s: the load and the aimed jobs
    refused: int = 0  # 503s while Redis was down (each such row is failed, not lost)
    hits: list[Hit] = field(default_factory=list)
    redis_restarts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    done_events: Counter[int] = field(default_factory=Counter)  # done events per job -> jobs
    wavs_checked: int = 0
    wavs_wrong: list[str] = field(default_factory=list)
    texts_wrong: list[str] = field(default_factory=list)
    reruns: int = 0
    interrupted: int = 0
    unfinished_generations: list[str] = field(default_factory=list)
    submit_s: float = 0.0
    total_s: float = 0.0
    announce_s: float = 0.0  # until the last `done` was in its log (the reconciler's repairs)
    timeline: list[tuple[str, float, float]] = field(default_factory=list)  # fault, start, end

    def summary(self) -> str:
        """The figures in one line, as docs/operations.md quotes them."""
        kills = sum(hit.fault == "SIGKILL" for hit in self.hits)
        freezes = sum(hit.fault == "SIGSTOP" for hit in self.hits)
        jobs = len(self.accepted)
        return (
            f"{jobs} jobs accepted ({self.refused} submissions refused with 503 while Redis was "
            f"down), 2 workers, {kills} SIGKILLs and {freezes} SIGSTOP/SIGCONT of pool children "
            f"running a job, {self.redis_restarts} Redis restart: statuses "
            f"{dict(sorted(self.statuses.items()))}; done events per job "
            f"{dict(sorted(self.done_events.items()))}; served WAVs checked {self.wavs_checked}, "
            f"wrong {len(self.wavs_wrong)}; generations re-run {self.reruns}, interrupted "
            f"{self.interrupted}; submitted in {self.submit_s:.1f} s, all finished in "
            f"{self.total_s:.1f} s ({jobs / self.total_s:.0f} jobs/s), the last done event "
            f"logged at {self.announce_s:.1f} s"
        )


def _submit(stack: Stack, body: dict[str, Any], figures: Figures, lock: threading.Lock) -> str:
    """Submits like a client that retries a 503 (Redis restarting) after a pause."""
    for _ in range(200):
        response = stack.http.post(f"{stack.url}/v1/jobs", json=body, timeout=30)
        if response.status_code == 202:
            job_id = str(response.json()["id"])
            with lock:
                figures.accepted.append(job_id)
            return job_id
        assert response.status_code == 503, response.text
        with lock:
            figures.refused += 1
        time.sleep(0.25)
    raise AssertionError("the service refused a submission for 50 s")


def _aim(stack: Stack, fault: str, index: int, figures: Figures, lock: threading.Lock) -> None:
    """Submits a slow job, waits until a child generates it, and signals that child."""
    prompt = f"slow target {index} " + " ".join(f"w{i}" for i in range(10))
    job_id = _submit(stack, {"text": prompt, "reply": "voice"}, figures, lock)
    pid = stack.generating_child(job_id, prompt)
    deadline = time.monotonic() + 300
    os.kill(pid, signal.SIGKILL if fault == "SIGKILL" else signal.SIGSTOP)
    figures.hits.append(Hit(fault, job_id, pid))
    if fault == "SIGSTOP":
        # Frozen until its lease lapsed and the job went back to the queue (or on to the
        # other worker), then thawed: it must find out and write nothing more.
        try:
            while time.monotonic() < deadline:
                status, _stage, owner = stack.lease_of(job_id)
                if status != "running" or not owner.endswith(f":{pid}"):
                    break
                time.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)


def _restart_redis(stack: Stack, figures: Figures) -> None:
    stack.stop_redis()
    time.sleep(2)
    stack.start_redis()
    figures.redis_restarts += 1


def _all_rows(stack: Stack) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = stack.http.get(f"{stack.url}/v1/jobs", params=params, timeout=30).json()
        rows.update((job["id"], job) for job in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def _wait_all_finished(stack: Stack, figures: Figures, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = _all_rows(stack)
        if all(job["status"] in TERMINAL for job in rows.values()):
            figures.rows = rows
            return
        if time.monotonic() > deadline:
            raise AssertionError("jobs left unfinished after the load")
        time.sleep(1)


def _event_logs(stack: Stack, job_ids: list[str], timeout: float) -> dict[str, Any]:
    """Every job's event log, once each holds a `done` or `timeout` passed: an end announced
    while Redis was down is announced again by the reconciler, a few seconds later."""
    client = Redis(port=stack.redis_port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.xrange(key(job_id))
                logs = dict(zip(job_ids, pipe.execute(), strict=True))
            ended = all(any(raw[b"type"] == b"done" for _id, raw in log) for log in logs.values())
            if ended or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)
    finally:
        client.close()


def _count(stack: Stack, figures: Figures, started: float) -> None:
    """Counts, per job, terminal states, done events, served WAVs and generations."""
    figures.statuses = Counter(job["status"] for job in figures.rows.values())
    logs = _event_logs(stack, list(figures.rows), timeout=60)
    figures.announce_s = time.monotonic() - started
    for entries in logs.values():
        kinds = [raw[b"type"].decode() for _id, raw in entries]
        figures.done_events[kinds.count("done")] += 1
        if kinds.count("done") == 1 and kinds[-1] != "done":
            figures.done_events[-1] += 1  # an event after done: counted apart
    for job_id, job in figures.rows.items():
        result = job["result"] or {}
        if job["status"] == "succeeded" and result.get("text") != f"echo: {job['input']['text']}":
            figures.texts_wrong.append(job_id)
        if result.get("audio_url"):
            wav = stack.http.get(stack.url + result["audio_url"], timeout=30).content
            figures.wavs_checked += 1
            if abs(sf.info(io.BytesIO(wav)).duration - result["audio_seconds"]) > 0.002:
                figures.wavs_wrong.append(job_id)
    _count_generations(stack.data_dir / "paced-generations.log", figures)


def _count_generations(log: Path, figures: Figures) -> None:
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        what, _pid, prompt = line.split("\t", 2)
        (starts if what == "start" else ends)[prompt] += 1
    figures.reruns = sum(count - 1 for count in starts.values())
    figures.interrupted = sum(starts[prompt] - ends[prompt] for prompt in starts)
    figures.unfinished_generations = [prompt for prompt in starts if ends[prompt] != 1]


def run(
    data_dir: Path,
    *,
    jobs: int,
    kills: int,
    freezes: int,
    redis_restarts: int = 1,
    database_url: str | None = None,
) -> Figures:
    """Runs the load with its faults and counts what came of every job.

    Args:
        data_dir: An empty folder for the run's data and logs.
        jobs: How many ordinary jobs to submit (half voice, half text).
        kills: Pool children to SIGKILL while they generate a job.
        freezes: Pool children to SIGSTOP while they generate a job, past their lease.
        redis_restarts: Redis restarts during the load.
        database_url: The database; SQLite in `data_dir` when None.

    Returns:
        The figures.
    """
    env = {**ENGINES, **({"DATABASE_URL": database_url} if database_url else {})}
    stack = Stack(data_dir, **env)
    figures, lock = Figures(), threading.Lock()
    faults = ["SIGKILL"] * kills + ["SIGSTOP"] * freezes + ["redis"] * redis_restarts
    random.Random(jobs).shuffle(faults)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker(1)
        stack.start_worker(2)
        started = time.monotonic()

        def submit(index: int) -> str:
            body = {"text": f"load {index}", "reply": "voice" if index % 2 else "text"}
            return _submit(stack, body, figures, lock)

        with ThreadPoolExecutor(max_workers=6) as pool:
            submitted = pool.map(submit, range(jobs))
            for index, fault in enumerate(faults):
                time.sleep(1)
                begun = time.monotonic() - started
                if fault == "redis":
                    _restart_redis(stack, figures)
                else:
                    _aim(stack, fault, index, figures, lock)
                figures.timeline.append((fault, begun, time.monotonic() - started))
                _LOGGER.info("fault %s from %.1f s to %.1f s", *figures.timeline[-1])
            list(submitted)
        figures.submit_s = time.monotonic() - started
        _wait_all_finished(stack, figures, timeout=900)
        figures.total_s = time.monotonic() - started
        _count(stack, figures, started)
    finally:
        stack.close()
    return figures


def main() -> None:
    """Runs the full load and prints its figures as one line of JSON and one of text."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--freezes", type=int, default=4)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as data_dir:
        figures = run(
            Path(data_dir),
            jobs=args.jobs,
            kills=args.kills,
            freezes=args.freezes,
            redis_restarts=args.redis_restarts,
            database_url=args.database_url,
        )
    hits = [(hit.fault, hit.job_id, hit.pid) for hit in figures.hits]
    print(json.dumps({"hits": hits, "refused": figures.refused, "timeline": figures.timeline}))
    print(figures.summary())


if __name__ == "__main__":
    main()
