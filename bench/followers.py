"""Many followers at once: every one streams or is refused at once, and probes stay fast."""

# Run: `.venv/bin/python -m bench.followers [--followers 1000] [--rate 250] [--hold 15] [--mix]
# [--open] [--floor] [--env NAME=VALUE ...]`.
#
# It starts Redis and the API with the launcher's own command lines (`harness/stack.py`, the
# processes `scripts/serve.sh` runs), keyed as deployed (every request sends an API key;
# `--open`: none, the service runs open), and no worker, so every followed job stays queued and a
# follower that gets in is held for the whole run, as behind a busy worker. Then, while probes
# read `/healthz` and `GET /v1/jobs/{id}` on fresh connections every 10 ms (started on time
# whether or not the last one was answered), it opens the followers, `--rate` a second or all at
# once (`GET /v1/jobs/{id}/events` over raw sockets, spread over a few queued jobs;
# with `--mix`, one in ten is a `POST /v1/jobs` with `Prefer: wait=60` and one in ten a chat
# completion), holds them `--hold` seconds (past the 8-10 s keep-alive beat, when every held
# stream wakes), and reports:
#
# - each follower's time to its answer: a streaming one to the first bytes of its stream, a
#   refused one to its 503 (which must carry `Retry-After`), a declined wait to its 202;
# - the probes' latency percentiles over the whole run.

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import floor
from harness.stack import Stack

HOST = "127.0.0.1"
PROBE_INTERVAL = 0.01
CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}


@dataclass
class Answer:
    """What one request got: its kind of answer and how long it took, in seconds."""

    kind: str
    seconds: float
    retry_after: bool = False


@dataclass
class Run:
    """Everything measured in one run."""

    followers: list[Answer] = field(default_factory=list)
    probes: dict[str, list[float]] = field(default_factory=dict)
    probe_failures: int = 0


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Reads a status line and headers."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _request(method: str, path: str, body: dict[str, object] | None = None, **extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in extra.items())]
    data = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def follow(
    port: int, request: bytes, release: asyncio.Event, answers: list[Answer], patience: float
) -> None:
    """One follower: sends `request` and times the answer; a stream that starts, or a request
    still unanswered after a second (a wait or a chat held for its job), is held until
    `release`. No status line within `patience` seconds counts as unanswered."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        head = asyncio.ensure_future(_head(reader))
        done, _ = await asyncio.wait([head], timeout=1.0)
        if not done:
            done, _ = await asyncio.wait([head], timeout=patience - 1.0)
            kind = "held" if done else "unanswered"
            answers.append(Answer(kind, time.perf_counter() - started))
            await release.wait()
            head.cancel()
            writer.close()
            return
        status, headers = head.result()
        if status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
            await reader.readline()  # the first chunk's size: the stream has started
            answers.append(Answer("streaming", time.perf_counter() - started))
            reading = asyncio.ensure_future(reader.read(-1))  # keep-alives, until closed
            await release.wait()
            reading.cancel()
        else:
            kind = {202: "declined wait", 503: "refused"}.get(status, str(status))
            answers.append(Answer(kind, time.perf_counter() - started, "retry-after" in headers))
        writer.close()
    except (OSError, ValueError, IndexError) as error:
        answers.append(Answer(f"error {type(error).__name__}", time.perf_counter() - started))


async def probe_once(port: int, path: str, run: Run, auth: dict[str, str]) -> None:
    """Reads `path` on a fresh connection, timing it."""
    timings = run.probes.setdefault(path, [])
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(_request("GET", path, Connection="close", **auth))
        status, _ = await _head(reader)
        await reader.read(-1)
        writer.close()
        if status != 200:
            run.probe_failures += 1
    except (OSError, ValueError, IndexError):
        run.probe_failures += 1
    timings.append(time.perf_counter() - started)


async def probe(port: int, path: str, stop: asyncio.Event, run: Run, auth: dict[str, str]) -> None:
    """Starts a probe of `path` every PROBE_INTERVAL until `stop`, whether or not the last one
    has been answered: a slow answer cannot thin out the probes of a slow moment."""
    pending = []
    next_at = time.perf_counter()
    while not stop.is_set():
        pending.append(asyncio.ensure_future(probe_once(port, path, run, auth)))
        next_at += PROBE_INTERVAL
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*pending)


async def measure(
    args: argparse.Namespace, port: int, jobs: list[str], auth: dict[str, str]
) -> Run:
    """Opens the followers at `args.rate` a second while probing, holds them `args.hold`
    seconds, and closes them; each request sends `auth`."""
    run, stop, release = Run(), asyncio.Event(), asyncio.Event()
    paths = ["/healthz"] if args.floor else ["/healthz", f"/v1/jobs/{jobs[0]}"]
    probes = [asyncio.ensure_future(probe(port, path, stop, run, auth)) for path in paths]
    await asyncio.sleep(1.0)  # the probes' quiet baseline
    tasks = []
    started = time.perf_counter()
    for index in range(args.followers):
        job = jobs[index % len(jobs)] if jobs else ""
        if args.floor:
            request = _request("GET", "/healthz", Connection="close")
        elif args.mix and index % 10 == 1:
            request = _request("POST", "/v1/jobs", {"text": "Hi"}, Prefer="wait=60", **auth)
        elif args.mix and index % 10 == 2:
            request = _request("POST", "/v1/chat/completions", CHAT, **auth)
        else:
            request = _request("GET", f"/v1/jobs/{job}/events", Accept="text/event-stream", **auth)
        tasks.append(asyncio.ensure_future(follow(port, request, release, run.followers, 10.0)))
        if args.rate:
            await asyncio.sleep(max(0.0, started + (index + 1) / args.rate - time.perf_counter()))
    await asyncio.sleep(args.hold)
    release.set()
    await asyncio.gather(*tasks)
    stop.set()
    await asyncio.gather(*probes)
    return run


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def report(run: Run, followers: int) -> None:
    """Prints the figures of one run."""
    kinds = Counter(answer.kind for answer in run.followers)
    times = [answer.seconds for answer in run.followers if not answer.kind.startswith("error")]
    within = sum(1 for answer in run.followers if answer.seconds <= 1.0)
    refused = [a for a in run.followers if a.kind == "refused"]
    print(f"followers: {followers}; answers: {dict(kinds)}")
    print(
        f"  answered within 1 s: {within}; time to answer p50 {statistics.median(times) * 1000:.0f}"
        f" ms, p99 {percentile(times, 0.99) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    )
    print(f"  refusals with Retry-After: {sum(a.retry_after for a in refused)} of {len(refused)}")
    for path, timings in run.probes.items():
        name = "/v1/jobs/{id}" if path.startswith("/v1/jobs/") else path
        print(
            f"probe {name}: {len(timings)} requests, p50 {statistics.median(timings) * 1000:.1f} "
            f"ms, p99 {percentile(timings, 0.99) * 1000:.1f} ms, max {max(timings) * 1000:.0f} ms"
        )
    print(f"probe failures: {run.probe_failures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to hold the followers")
    parser.add_argument("--jobs", type=int, default=10, help="queued jobs the followers follow")
    parser.add_argument(
        "--rate", type=float, default=250, help="followers opened a second (0: all at once)"
    )
    parser.add_argument("--mix", action="store_true", help="add Prefer: wait and chat requests")
    parser.add_argument("--open", action="store_true", help="no API key: the open mode")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="the baseline: the floor app (bench/floor.py) under the same gunicorn settings, "
        "every follower a GET /healthz answered at once",
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the API")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as data_dir:
        stack = Stack(Path(data_dir), open_mode=args.open, LOG_LEVEL="WARNING", **env)
        try:
            stack.start_redis()
            if args.floor:
                database_url, redis_url = stack.env["DATABASE_URL"], stack.env["REDIS_URL"]
                with floor.running(database_url, redis_url, LOG_LEVEL="WARNING") as url:
                    run = asyncio.run(measure(args, int(url.rsplit(":", 1)[1]), [], {}))
            else:
                stack.start_api()
                jobs = [stack.submit(json={"text": f"Question {n}?"}) for n in range(args.jobs)]
                run = asyncio.run(measure(args, stack.api_port, jobs, stack.auth))
        finally:
            stack.close()
    print(
        "the floor," if args.floor else "the service,",
        "keyed" if not args.open else "open",
        "PostgreSQL" if "postgresql" in env.get("DATABASE_URL", "") else "SQLite",
    )
    report(run, args.followers)


if __name__ == "__main__":
    main()
