"""How fast answers reach a client: streaming and waiting, against polling and whole replies.

Run: `.venv/bin/python -m bench.delivery [--rounds N] [--url URL]`. Without `--url` it starts the
service on its defaults (embedded Redis, SQLite, the real models) the way `scripts/serve.sh` does,
keyed; with it, the key is read from VOICECHAT_API_KEY.

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
import statistics
import time
from collections.abc import Callable

import requests
from openai import OpenAI

from bench.service import auth, running

PROMPT = "Describe the sea in three sentences."
MAX_TOKENS = 80


def median_of(rounds: int, action: Callable[[], float]) -> float:
    """The median of `rounds` measurements returned by `action`."""
    return statistics.median(action() for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a running service; started here when omitted")
    args = parser.parse_args()
    if args.url is None:
        with running() as url:
            run(url, args.rounds, auth(url))
    else:
        key = os.environ.get("VOICECHAT_API_KEY", "")
        run(args.url.rstrip("/"), args.rounds, {"Authorization": f"Bearer {key}"} if key else {})


def run(url: str, rounds: int, headers: dict[str, str]) -> None:
    """Prints the figures for the service at `url`, sending `headers` (its API key)."""
    key = headers.get("Authorization", "").removeprefix("Bearer ") or "none"
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
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
    http.headers.update(headers)
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
