"""A job that runs past the soft time limit ends `failed` with code `timeout`, and the worker
goes on to the next job."""

from __future__ import annotations

import pytest

from tests.conftest import running_service

pytestmark = pytest.mark.e2e


def test_a_job_past_its_time_limit_fails_and_the_worker_goes_on(
    tmp_path_factory: pytest.TempPathFactory, long_speech: bytes
) -> None:
    with running_service(
        tmp_path_factory.mktemp("limits"), TASK_SOFT_TIME_LIMIT="1", TASK_TIME_LIMIT="30"
    ) as service:
        slow = service.submit(data=long_speech, headers={"Content-Type": "audio/wav"})
        quick = service.submit(json={"text": "Hi", "max_tokens": 1})
        job = service.wait(slow["id"])
        assert job["status"] == "failed", (job["timings"], job["result"])
        assert job["error"]["code"] == "timeout"
        assert job["result"] is None and job["finished_at"] is not None
        assert service.wait(quick["id"])["status"] == "succeeded"
