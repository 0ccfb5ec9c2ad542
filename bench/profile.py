"""What every request pays: where an API process spends its time on a route, sampled by py-spy.

Run: `.venv/bin/python -m bench.profile [--seconds S]` (on PostgreSQL with `BENCH_POSTGRES_URL`, as
`bench.submit`). Needs Debian's `wrk` and py-spy (in the
dev requirements; it reads the processes' memory, so it needs ptrace: root, or
`kernel.yama.ptrace_scope=0`). Starts the service keyed with the benchmark's null engines, its job
workers paused, loads `GET /healthz` then `POST /v1/jobs` with wrk (`-t2 -c16`) while py-spy
samples the API's gunicorn workers, and prints each part's share of the samples that were not
idle: gunicorn's own work (the socket, HTTP parsing, the threads), Flask's, the hooks every
request runs before and after its view, the view, and the access line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.service import bench_database, databases, running, service_processes
from bench.submit import callers, pause_workers, post_script, wrk
from bench.table import Row, markdown
from harness.engines import NULL_ENGINES, UNREACHED_LIMITS
from scripts.launch import start_embedded_redis

# A sample's part: the first of these frames that its stack holds (the Flask parts are disjoint
# calls under `wsgi_app`); a sample under none of them is gunicorn's own.
PARTS = (
    ("Logger.access (gunicorn/glogging.py)", "access line"),
    ("Flask.preprocess_request (flask/app.py)", "hooks before the view"),
    ("Flask.dispatch_request (flask/app.py)", "the view"),
    ("Flask.process_response (flask/app.py)", "hooks after the view"),
    ("Flask.do_teardown_request (flask/app.py)", "hooks after the view"),
    ("Flask.wsgi_app (flask/app.py)", "Flask itself"),
)
GUNICORN = "gunicorn itself"
_LINE_NUMBER = re.compile(r":\d+\)")
# Waits py-spy counts as busy (it sees their threads in a C call): gthread's pool workers waiting
# for a request and its main thread in epoll; gevent's hub with nothing to run, and the idle
# threads of its resolver's pool.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "EpollSelector.select (selectors.py)",
    "Hub.run (gevent/hub.py)",
    "acquire_with_timeout (gevent/_threading.py)",
)


def shares(raw: str) -> dict[str, float]:
    """Each part's share (%) of the samples in py-spy's raw (collapsed) output."""
    counted: collections.Counter[str] = collections.Counter()
    for line in filter(None, raw.splitlines()):
        stack, _, count = line.rpartition(" ")
        called = _LINE_NUMBER.sub(")", stack).split(";")
        if called[-1] in IDLE_LEAVES:
            continue
        frames = set(called)
        part = next((name for frame, name in PARTS if frame in frames), GUNICORN)
        counted[part] += int(count)
    total = sum(counted.values()) or 1
    return {part: 100 * counted[part] / total for part in (GUNICORN, *dict(PARTS).values())}


def _api_workers(url: str) -> list[int]:
    """The API's gunicorn workers (all its gunicorn processes but the master, the oldest)."""
    return sorted(pid for pid, command in service_processes(url).items() if "gunicorn" in command)[
        1:
    ]


def profile(url: str, route: str, seconds: int, script: Path | None) -> dict[str, float]:
    """Loads `route` with wrk for `seconds` while py-spy samples the API's workers.

    Raises:
        RuntimeError: wrk counted errors or no requests, or py-spy failed or sampled nothing
            (it lacked ptrace, say): either would print as a profile, all zeros or of refusals.
    """
    spy = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--rate",
        "200",
        "--format",
        "raw",
        "--duration",
        str(seconds),
    ]
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / f"{pid}.txt" for pid in _api_workers(url)]
        spies = []
        for output in outputs:
            with output.with_suffix(".err").open("wb") as log:
                command = [*spy, "--pid", output.stem, "--output", str(output)]
                spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
        # py-spy's reads of the process stall it now and then: an answer late by seconds is not
        # an error here, where the shares, not the latency, are measured.
        load = wrk(f"{url}{route}", seconds, 16, script, timeout=30)
        for sampler in spies:
            sampler.wait()
        if load.errors or not load.requests_per_s:
            raise RuntimeError(
                f"wrk on {route}: {load.errors} non-2xx answers or socket errors, "
                f"{load.requests_per_s:.0f} requests/s: not a profile of the request path"
            )
        for sampler, output in zip(spies, outputs, strict=True):
            if sampler.returncode != 0:
                said = output.with_suffix(".err").read_text(errors="replace").strip()
                raise RuntimeError(
                    f"py-spy on API worker {output.stem} exited {sampler.returncode} (allowed "
                    f"ptrace? it needs root, or kernel.yama.ptrace_scope=0): {said[-500:]}"
                )
        raw = "\n".join(output.read_text() for output in outputs if output.exists())
        if not raw.strip():
            raise RuntimeError(f"py-spy sampled nothing of the API's workers on {route}")
        return shares(raw)


def rows(seconds: int = 10) -> list[Row]:
    """The shares of each part, for `/healthz` and for a keyed submit."""
    measured = {}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        redis = start_embedded_redis(Path(folder) / "redis")
        stack.callback(redis.stop)
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        # As `bench.submit`: the deployed limits but the queue's depth, submits over many keys (one
        # key's lifted limits would profile a count of its thousands of queued jobs).
        env = {**NULL_ENGINES, "MAX_QUEUE_DEPTH": UNREACHED_LIMITS["MAX_QUEUE_DEPTH"]}
        name = databases()[-1]  # one database: PostgreSQL when configured
        env |= {
            "REDIS_URL": redis_url,
            "DATABASE_URL": stack.enter_context(bench_database(name, Path(folder))),
        }
        url = stack.enter_context(running(**env))
        pause_workers(redis_url)
        script = post_script(Path(folder) / "post.lua", callers(env["DATABASE_URL"], "profile"))
        wrk(f"{url}/healthz", 2, 16)  # warm-up
        measured["GET /healthz"] = profile(url, "/healthz", seconds, None)
        measured["POST /v1/jobs"] = profile(url, "/v1/jobs", seconds, script)
    return [
        Row(f"request path, {route}", f"{part}, share of the API's samples", share, "%")
        for route, parts in measured.items()
        for part, share in parts.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    print(markdown(rows(parser.parse_args().seconds)))


if __name__ == "__main__":
    main()
