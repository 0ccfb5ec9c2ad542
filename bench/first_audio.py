"""Time to first audio: a voice reply streamed sentence by sentence, against the whole WAV.

Run: `.venv/bin/python -m bench.first_audio [--rounds N]`. Starts the service on its defaults
(the real models) and asks for spoken answers of one sentence and of several. Each round
submits the prompt and at once opens `GET /v1/jobs/{id}/audio`, which streams the reply while
the worker makes it: the time to its first audio bytes (after the WAV header) is set against the
time to its last, when the whole WAV exists, measured on the same request.
"""

from __future__ import annotations

import statistics
import time

import requests

from bench.service import client, running
from bench.table import Row, run_rounds

PROMPTS = {
    "one sentence": ("Say hello in one short sentence.", 40),
    "several sentences": ("Tell me three facts about the moon.", 120),
}


def once(http: requests.Session, url: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """Seconds from submit to the first audio bytes and to the end of the stream."""
    started = time.perf_counter()
    job = {"text": prompt, "reply": "voice", "max_tokens": max_tokens, "temperature": 0}
    job_id = http.post(f"{url}/v1/jobs", json=job, timeout=30).json()["id"]
    first = None
    seen = 0
    with http.get(f"{url}/v1/jobs/{job_id}/audio", stream=True, timeout=300) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(chunk_size=None):
            seen += len(chunk)
            if first is None and seen > 44:  # past the WAV header: sound
                first = time.perf_counter() - started
    whole = time.perf_counter() - started
    return first or whole, whole


def rows(rounds: int = 5) -> list[Row]:
    """The first-audio figures as table rows."""
    table = []
    with running() as url:
        http = client(url)
        for name, (prompt, max_tokens) in PROMPTS.items():
            once(http, url, prompt, max_tokens)  # warm-up
            runs = [once(http, url, prompt, max_tokens) for _ in range(rounds)]
            first = statistics.median(a for a, _ in runs)
            whole = statistics.median(b for _, b in runs)
            ratio = statistics.median(a / b for a, b in runs)
            table.append(Row("voice reply, streamed", f"{name}: first audio", first * 1000, "ms",
                             ratio, f"whole WAV {whole * 1000:.0f} ms"))  # fmt: skip
    return table


def main() -> None:
    run_rounds(__doc__, rows)


if __name__ == "__main__":
    main()
