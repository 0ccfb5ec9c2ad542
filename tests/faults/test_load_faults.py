"""Load under faults, counted, at a size CI affords: two workers, 300 jobs, pool children
SIGKILLed and frozen while they run a job, a Redis restart (`bench/load_faults.py`; the figures in
docs/operations.md are that command's full run).

Per job: exactly one terminal state, exactly one `done` event and nothing after it, the served
WAV the one its row describes; every signal hit a job being generated, and the generations run
again are exactly those the signals interrupted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load_faults import run

pytestmark = pytest.mark.e2e

JOBS, KILLS, FREEZES = 300, 2, 2


def test_every_job_ends_once_with_one_done_and_its_own_reply(tmp_path: Path) -> None:
    figures = run(tmp_path, jobs=JOBS, kills=KILLS, freezes=FREEZES, redis_restarts=1)
    print(figures.summary())
    print(figures.timeline)
    accepted = set(figures.accepted)
    assert len(accepted) == len(figures.accepted) == JOBS + KILLS + FREEZES
    # Every row is accounted for: the accepted ones, and one failed row per refused submission.
    assert accepted <= set(figures.rows), "a job was lost"
    extra = [job for job_id, job in figures.rows.items() if job_id not in accepted]
    assert len(extra) == figures.refused
    assert all(job["error"]["code"] == "broker_unavailable" for job in extra)
    assert all(figures.rows[job_id]["status"] == "succeeded" for job_id in accepted)
    assert figures.done_events == {1: len(figures.rows)}, figures.done_events
    assert figures.texts_wrong == [] and figures.wavs_wrong == []
    assert figures.wavs_checked >= JOBS // 2
    # Each signal hit a running job: the job it hit was run again on a second attempt.
    assert [hit.fault for hit in figures.hits].count("SIGKILL") == KILLS
    assert [hit.fault for hit in figures.hits].count("SIGSTOP") == FREEZES
    assert all(figures.rows[hit.job_id]["attempts"] == 2 for hit in figures.hits)
    assert figures.interrupted == len(figures.hits)
    assert figures.reruns == figures.interrupted
    assert figures.unfinished_generations == []
    assert figures.redis_restarts == 1
