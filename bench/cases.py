"""The four cases end to end on the real CPU engines, against the same engine calls made directly.

Run: `.venv/bin/python -m bench.cases [--rounds N]`. First, in this process, the engines are
loaded and called directly on the spoken test question (Piper makes it): transcribe, generate,
synthesize, each the median of N. Then the service starts on its defaults and each case
(text→text, voice→text, text→voice, voice→voice) is sent N times with `Prefer: wait`: its median
wall time is set against the sum of the direct calls that case makes, so the ratio is what the
service adds (HTTP, rows, queue, events, WAV files). Also: the first job after start against a
warm one (the same question, asked after another so that llama.cpp's prompt cache holds for both
only the system prompt), over `FIRST_JOB_STARTS` starts of the service, and the worker's pool
child's resident memory with all three models loaded.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import soxr

from bench.service import client, running
from bench.stages import QUESTION, best_of
from bench.table import Row, run_rounds
from models.settings import Settings
from worker.runtime import get_pipeline

MAX_TOKENS = 48
# The service is started this many times for the first job's figure (one sample a start).
FIRST_JOB_STARTS = 3
# Asked between two warm jobs, untimed: llama.cpp keeps the last prompt evaluated and skips
# what a new prompt shares with it, so a question asked twice in a row costs less the second
# time. With this in between, the warm jobs find in the cache what the first job found there
# (the system prompt, from the worker's warm-up), and give the same answer, of the same length.
SPACER = "Name one colour of the rainbow."
CASES = {
    "text→text": ("text", "text"),
    "voice→text": ("audio", "text"),
    "text→voice": ("text", "voice"),
    "voice→voice": ("audio", "voice"),
}


def direct(rounds: int) -> tuple[bytes, dict[str, float]]:
    """The question as a WAV, and each stage's median seconds when called directly."""
    with tempfile.TemporaryDirectory() as data_dir:
        pipeline = get_pipeline(Settings.from_env({"DATA_DIR": data_dir}))
        voice = pipeline.settings.tts_voice
        spoken = pipeline.synthesizer.synthesize(QUESTION, voice=voice)
        samples = soxr.resample(
            spoken.samples.astype(np.float32) / 32768, spoken.sample_rate, 16_000
        )
        stt, _ = best_of(
            rounds, lambda: pipeline.transcriber.transcribe(samples.astype(np.float32))
        )
        messages = pipeline.messages_for(QUESTION, {"max_tokens": MAX_TOKENS})
        llm, reply = best_of(
            rounds,
            lambda: pipeline.generator.generate(messages, max_tokens=MAX_TOKENS, temperature=0.0),
        )
        tts, _ = best_of(rounds, lambda: pipeline.synthesizer.synthesize(reply.text, voice=voice))
    return spoken.to_wav(), {"stt": stt, "llm": llm, "tts": tts}


def _send(
    http: requests.Session, url: str, case: str, wav: bytes, question: str = QUESTION
) -> float:
    given, reply = CASES[case]
    options = {"reply": reply, "max_tokens": str(MAX_TOKENS), "temperature": "0"}
    wait = {"Prefer": "wait=120"}
    started = time.perf_counter()
    if given == "text":
        answer = http.post(f"{url}/v1/jobs", data={"text": question, **options}, headers=wait)
    else:
        files = {"audio": ("question.wav", wav, "audio/wav")}
        answer = http.post(f"{url}/v1/jobs", data=options, files=files, headers=wait)
    seconds = time.perf_counter() - started
    if answer.status_code != 200 or answer.json()["status"] != "succeeded":
        raise RuntimeError(f"{case} did not succeed: {answer.status_code} {answer.text[:200]}")
    return seconds


def _pool_child_rss_mb(url: str) -> float:
    workers = requests.get(f"{url}/readyz", timeout=5).json()["checks"]["workers"]["details"]
    status = Path(f"/proc/{workers[0]['pid']}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def rows(rounds: int = 5) -> list[Row]:
    """The end-to-end figures as table rows."""
    wav, stage = direct(rounds)
    cost = {
        "text→text": stage["llm"],
        "voice→text": stage["stt"] + stage["llm"],
        "text→voice": stage["llm"] + stage["tts"],
        "voice→voice": stage["stt"] + stage["llm"] + stage["tts"],
    }
    table = []
    with running() as url:
        http = client(url)
        first = _first_and_warm(http, url, wav, rounds)
        for case in CASES:
            wall = statistics.median(_send(http, url, case, wav) for _ in range(rounds))
            against = f"direct calls {cost[case] * 1000:.0f} ms"
            table.append(Row("four cases, real engines", f"{case}, Prefer: wait", wall * 1000,
                             "ms", wall / cost[case], against))  # fmt: skip
        memory = _pool_child_rss_mb(url)
    # The first job is one sample a start: the figure is the median over FIRST_JOB_STARTS starts.
    for _ in range(FIRST_JOB_STARTS - 1):
        with running() as url:
            first += _first_and_warm(client(url), url, wav, rounds)
    ratio = statistics.median(f / w for f, w in first)
    warm = statistics.median(w for _, w in first) * 1000
    table.append(Row("worker", f"first job after start (median of {FIRST_JOB_STARTS} starts)",
                     statistics.median(f for f, _ in first) * 1000, "ms", ratio,
                     f"warm job {warm:.0f} ms"))  # fmt: skip
    table.append(Row("worker", "pool child memory, 3 models loaded", memory, "MB"))
    return table


def _first_and_warm(
    http: requests.Session, url: str, wav: bytes, rounds: int
) -> list[tuple[float, float]]:
    """The first job of a service just started, and the median of `rounds` warm ones after it
    (each asked after the spacer question), in seconds."""
    first = _send(http, url, "text→text", wav)

    def warm_once() -> float:
        _send(http, url, "text→text", wav, SPACER)
        return _send(http, url, "text→text", wav)

    return [(first, statistics.median(warm_once() for _ in range(rounds)))]


def main() -> None:
    run_rounds(__doc__, rows)


if __name__ == "__main__":
    main()
