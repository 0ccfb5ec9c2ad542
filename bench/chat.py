"""`/v1/chat/completions` against llama-cpp-python's own OpenAI-compatible server, same model.

Run: `.venv/bin/python -m bench.chat [--rounds N]`. Starts the service on its defaults (the real
models, SQLite, embedded Redis) and `python -m llama_cpp.server` on the same GGUF with the same
threads and context; then, round by round and in turn, streams the same chat from each with the
official `openai` client. Per round: time to the first content token, tokens per second over
the whole answer, and the answer's wall time (1 / requests per second, one at a time); the
figures quoted are medians over rounds, and each ratio (service / server) is taken round by round.
Then, as many rounds again on the service alone, its time to first token split into steps by the
job's timestamps and its events' ids (`STEPS`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import requests
from openai import OpenAI

from bench.service import auth, client, running
from bench.table import Row, markdown
from harness.stack import free_port
from models.settings import Settings
from worker.engines.model_files import llm_model_file

MESSAGES = [{"role": "user", "content": "Tell me three facts about the moon."}]
MAX_TOKENS = 64


@contextmanager
def llama_server(model: Path, threads: int, context: int) -> Iterator[str]:
    """Runs llama-cpp-python's server on `model`; yields its `/v1` base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context),
            "--n_threads", str(threads), "--logits_all", "false",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def stream_once(client: OpenAI, model: str) -> dict[str, float]:
    """Streams one answer; returns seconds to the first token, total seconds and tokens."""
    started = time.perf_counter()
    first = None
    tokens = pieces = 0
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            if first is None:
                first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    # llama-cpp-python's server sends no usage when streaming: it streams a token a chunk.
    return {"ttft_s": first or total, "total_s": total, "tokens": float(tokens or pieces)}


# Where the service's time to first token goes, from the job's timestamps and its events' stream
# ids (milliseconds on the server's clock, which is this machine's): the request to the row, the
# row to the claim, the claim to the `running` event, to the stage's event, to the first reply
# text's event, and that event to the client.
STEPS = ("row made", "claimed", "running event", "stage event", "first text event", "client")


def first_token_steps(url: str, model: str) -> dict[str, float]:
    """Streams one chat with `requests`, then reads the job and replays its events: the
    milliseconds each step of `STEPS` took, from the one before it (the first: from sending)."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    sent = time.time()
    first = None
    http = client(url)
    with http.post(
        f"{url}/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=60
    ) as answer:
        job_id = answer.headers["X-Job-Id"]
        for line in answer.iter_lines():
            # The first chunk carries the role and "" as its content; the first text follows.
            text = line.startswith(b"data: {") and b'"content":"' in line
            if first is None and text and b'"content":""' not in line:
                first = time.time()
    job = http.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
    replay = http.get(f"{url}/v1/jobs/{job_id}/events", timeout=30).text
    seen: dict[str, float] = {}
    kind = ""
    for line in replay.splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("id: ") and kind not in seen:
            seen[kind] = int(line[4:].split("-")[0]) / 1000
    marks = [
        sent,
        datetime.fromisoformat(job["created_at"]).timestamp(),
        datetime.fromisoformat(job["started_at"]).timestamp(),
        seen["status"],
        seen["stage"],
        seen["delta"],
        first or time.time(),
    ]
    return {step: (b - a) * 1000 for step, a, b in zip(STEPS, marks[:-1], marks[1:], strict=True)}


def measure(ours: OpenAI, theirs: OpenAI, model: str, rounds: int) -> dict[str, float]:
    """Alternates the two servers for `rounds` rounds, each measured request preceded by one of
    its own that is not: the first request to either after the other's ran 30-50 ms later to
    the first token (the service's; 0-20 ms llama_cpp.server's), even after 2 s idle, though
    neither is slower after its own. Each is measured as it runs when deployed, alone."""

    def settled(server: OpenAI) -> dict[str, float]:
        stream_once(server, model)
        return stream_once(server, model)

    pairs = [(settled(ours), settled(theirs)) for _ in range(rounds)]

    def rate(run: dict[str, float]) -> float:
        return run["tokens"] / run["total_s"]

    return {
        "service_ttft_ms": statistics.median(a["ttft_s"] for a, _ in pairs) * 1000,
        "server_ttft_ms": statistics.median(b["ttft_s"] for _, b in pairs) * 1000,
        "ttft_ratio": statistics.median(a["ttft_s"] / b["ttft_s"] for a, b in pairs),
        "service_tokens_per_s": statistics.median(rate(a) for a, _ in pairs),
        "server_tokens_per_s": statistics.median(rate(b) for _, b in pairs),
        "throughput_ratio": statistics.median(rate(a) / rate(b) for a, b in pairs),
        "requests_per_s_ratio": statistics.median(b["total_s"] / a["total_s"] for a, b in pairs),
    }


def rows(rounds: int = 7) -> list[Row]:
    """The chat figures as table rows."""
    settings = Settings.from_env()
    server = llama_server(
        llm_model_file(settings), settings.llm_threads, settings.llm_context_tokens
    )
    with running() as url, server as base:
        key = auth(url)["Authorization"].removeprefix("Bearer ")
        ours = OpenAI(base_url=f"{url}/v1", api_key=key)
        theirs = OpenAI(base_url=base, api_key="none")
        model = ours.models.list().data[0].id
        f = measure(ours, theirs, model, rounds)
        steps = [first_token_steps(url, model) for _ in range(rounds)]
    bench, server = "chat completions, streamed", "llama_cpp.server"
    return [
        Row(bench, "tokens/s", f["service_tokens_per_s"], "tok/s", f["throughput_ratio"],
            f"{server} {f['server_tokens_per_s']:.1f} tok/s"),
        Row(bench, "time to first token", f["service_ttft_ms"], "ms", f["ttft_ratio"],
            f"{server} {f['server_ttft_ms']:.0f} ms"),
        Row(bench, "requests/s, one at a time", f["requests_per_s_ratio"], "x server",
            f["requests_per_s_ratio"], server),
        *(Row(bench, f"time to first token, step to {step}",
              statistics.median(s[step] for s in steps), "ms") for step in STEPS),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(markdown(rows(args.rounds)))


if __name__ == "__main__":
    main()
