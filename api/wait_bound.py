"""The bound on a synchronous OpenAI route's wait for its job, OPENAI_WAIT_SECONDS (issue 20): a
request the queue ahead would keep past it is refused at once, before any job is made."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass

from flask import current_app
from redis import Redis, RedisError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.held_requests import RETRY_AFTER_SECONDS
from models import heartbeat, queries
from models.errors import WaitTimedOut, WaitTooLong
from models.settings import Settings

_LOGGER = logging.getLogger(__name__)

# The queue ahead: its queued jobs times the median run of the last RECENT_JOBS that succeeded
# (the recent mix of kinds is the best guess of theirs; a median, so one long job does not move
# it), shared among the ready workers. The jobs running now and this job's own run are left out:
# a request is refused only when the queue alone is out of reach; a job too long by itself gets
# `wait_timeout` at the bound.
RECENT_JOBS = 20
# With no job to go by: slower than every median of bench/results.md on a 2-core CPU, so an
# unknown queue is judged slower than it likely is, not faster.
UNKNOWN_JOB_SECONDS = 10.0
# No job is estimated shorter: a median of 0 would make any queue free.
SHORTEST_JOB_SECONDS = 0.01
# The least `Retry-After`: the held-request bound's short pause.
SHORTEST_RETRY_SECONDS = RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class QueueAhead:
    """The jobs queued ahead of a job made now, and how long they are expected to take."""

    jobs: int
    job_seconds: float
    workers: int

    @property
    def seconds(self) -> float:
        return self.jobs * self.job_seconds / self.workers

    def retry_after(self, bound: int) -> int:
        """When the queue should be down to the bound; at least SHORTEST_RETRY_SECONDS, and at
        most the bound (further ahead, an estimate is a guess)."""
        longest = max(bound, SHORTEST_RETRY_SECONDS)
        return min(max(math.ceil(self.seconds - bound), SHORTEST_RETRY_SECONDS), longest)


def queue_ahead(bound: int) -> QueueAhead:
    """The queue ahead of a job made now, counted only as far as twice `bound` of work (past that,
    `retry_after` says the bound whatever the count), on a connection of the request's own."""
    sessions: sessionmaker[Session] = current_app.extensions["voicechat.sessions"]
    workers = _ready_workers(current_app.extensions["voicechat.redis"])
    with sessions() as session:
        runs = queries.recent_run_seconds(session, RECENT_JOBS)
        job_seconds = UNKNOWN_JOB_SECONDS
        if runs:
            job_seconds = max(statistics.median(runs), SHORTEST_JOB_SECONDS)
        enough = math.floor(2 * bound * workers / job_seconds) + 1
        jobs = queries.queued_jobs(session, enough)
    return QueueAhead(jobs=jobs, job_seconds=job_seconds, workers=workers)


def _ready_workers(redis: Redis) -> int:
    # None ready counts as one: a worker may be loading its models, and saying that no worker
    # is there is /readyz's answer, not this one's.
    try:
        return max(1, len(heartbeat.ready(heartbeat.live_workers(redis))))
    except (RedisError, OSError) as error:
        _LOGGER.warning("ready workers unknown error=%s", type(error).__name__)
        return 1


def check_reachable(settings: Settings) -> None:
    """Refuses (WaitTooLong) a request whose job the queue ahead would keep past the bound."""
    bound = settings.openai_wait_seconds
    reads: Engine = current_app.extensions["voicechat.reads"]
    with reads.connect() as connection:
        if not queries.queued_jobs(connection, 1):  # none ahead: no estimate needed
            return
    ahead = queue_ahead(bound)
    if ahead.seconds <= bound:
        return
    retry = ahead.retry_after(bound)
    _LOGGER.info(
        "wait too long queued=%s job_seconds=%.3f workers=%s bound=%s retry_after=%s",
        ahead.jobs,
        ahead.job_seconds,
        ahead.workers,
        bound,
        retry,
    )
    raise WaitTooLong(
        f"The jobs queued ahead would take more than the {bound} s this route waits for its "
        f"job; nothing was made. Try again in {retry} s.",
        retry_after=retry,
    )


def timed_out(job_id: str, settings: Settings, *, stream: bool = False) -> WaitTimedOut:
    """The error of a request whose job did not finish (a `stream`'s: did not start) within
    OPENAI_WAIT_SECONDS; the caller cancels the job."""
    bound = settings.openai_wait_seconds
    retry = queue_ahead(bound).retry_after(bound)
    return WaitTimedOut(
        f"Job {job_id} did not {'start' if stream else 'finish'} within the {bound} s this "
        f"route waits, and is canceled. Try again in {retry} s.",
        retry_after=retry,
    )
