"""How fast answers reach a client: streaming and waiting, against polling and whole replies.

Run: `.venv/bin/python -m bench.delivery [--rounds N] [--url URL]`. Without `--url` it starts the
service on its defaults (embedded Redis, SQLite, the real models) the way `scripts/serve.sh` does.

Two comparisons, each against a baseline measured in the same process on the same prompt:
- time to the first reply text through the OpenAI streaming route, against the time to the
  whole (non-streamed) reply: the ratio is how much sooner a chat client can start showing (or
  speaking) the answer;
- the end-to-end latency of `POST /v1/jobs` with `Prefer: wait`, against submit-then-poll every
  0.5 s (what Celery's `AsyncResult.get()` does): the difference is the cost of polling.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from openai import OpenAI

PROMPT = "Describe the sea in three sentences."
MAX_TOKENS = 80


@contextmanager
def service() -> Iterator[str]:
    """Starts the service on its defaults in a temporary data folder."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(DATA_DIR=data_dir, LOG_LEVEL="WARNING")
        log = Path(data_dir) / "service.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts.launch", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            while "service ready" not in log.read_text():
                if process.poll() is not None:
                    raise SystemExit(f"the service did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)


def median_of(rounds: int, action: Callable[[], float]) -> float:
    """The median of `rounds` measurements returned by `action`."""
    return statistics.median(action() for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a running service; started here when omitted")
    args = parser.parse_args()
    with service() if args.url is None else _given(args.url) as url:
        run(url, args.rounds)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


def run(url: str, rounds: int) -> None:
    """Prints the figures for the service at `url`."""
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": PROMPT}]

    def whole() -> float:
        started = time.perf_counter()
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,  # type: ignore[arg-type]
        )
        return time.perf_counter() - started

    def first_text() -> float:
        started = time.perf_counter()
        first = None
        for chunk in client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        ):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        assert first is not None
        return first

    http = requests.Session()
    job = {"text": "Say hello.", "max_tokens": 8, "temperature": 0}

    def waited() -> float:
        started = time.perf_counter()
        answer = http.post(f"{url}/v1/jobs", json=job, headers={"Prefer": "wait=60"}, timeout=90)
        assert answer.status_code == 200, answer.text
        return time.perf_counter() - started

    def polled() -> float:
        started = time.perf_counter()
        job_id = http.post(f"{url}/v1/jobs", json=job, timeout=30).json()["id"]
        while http.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()["status"] != "succeeded":
            time.sleep(0.5)
        return time.perf_counter() - started

    whole()  # one round each way first, so neither pays for a cold cache
    first_text()
    whole_s, first_s = median_of(rounds, whole), median_of(rounds, first_text)
    polled_s, waited_s = median_of(rounds, polled), median_of(rounds, waited)
    rows = [
        (f"whole chat reply, {MAX_TOKENS} tokens max (baseline)", whole_s, 1.0),
        ("first streamed text of the same reply", first_s, first_s / whole_s),
        ("submit, then poll every 0.5 s (baseline)", polled_s, 1.0),
        ("submit with Prefer: wait", waited_s, waited_s / polled_s),
    ]
    print(f"{'measure':<52} {'median':>9} {'ratio':>7}")
    for name, seconds, ratio in rows:
        print(f"{name:<52} {seconds * 1000:>7.0f}ms {ratio:>7.2f}")


if __name__ == "__main__":
    main()
