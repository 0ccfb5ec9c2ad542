"""Per-stage latency of the real engines, as ratios against a baseline run in the same process.

Run: `.venv/bin/python -m bench.stages [--rounds N]`. Absolute seconds on a shared 2-core machine
vary from run to run; the ratios against the baseline (a fixed NumPy workload timed in the same
process, between the stages) and the real-time factors (processing time / audio length) are the
figures to compare between commits and machines.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr

from bench.table import Row, run_rounds
from models.settings import Settings
from worker.runtime import get_pipeline

QUESTION = "What is the capital of France?"


def baseline() -> None:
    """A fixed CPU workload: 40 products of two 256x256 float32 matrices."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256), dtype=np.float32)
    for _ in range(40):
        a = np.tanh(a @ a)


def best_of(rounds: int, action: Callable[[], Any]) -> tuple[float, Any]:
    """Runs `action` `rounds` times; returns the median seconds and the last result."""
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def rows(rounds: int = 5) -> list[Row]:
    """Each engine on the spoken test question, against the baseline workload."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env({"DATA_DIR": data_dir})
        pipeline = get_pipeline(settings)
        base, _ = best_of(rounds, baseline)
        voice = settings.tts_voice
        tts_s, audio = best_of(
            rounds, lambda: pipeline.synthesizer.synthesize(QUESTION, voice=voice)
        )
        samples = soxr.resample(audio.samples.astype(np.float32) / 32768, audio.sample_rate, 16_000)
        stt_s, _ = best_of(
            rounds, lambda: pipeline.transcriber.transcribe(samples.astype(np.float32))
        )
        messages = pipeline.messages_for(QUESTION, {})
        llm_s, reply = best_of(
            rounds, lambda: pipeline.generator.generate(messages, max_tokens=64, temperature=0.0)
        )
    bench, against = "engines, called directly", f"NumPy baseline {base * 1000:.1f} ms"
    heard, tokens = audio.duration, reply.completion_tokens
    return [
        Row(bench, f"transcribe {heard:.1f} s of speech (RTF {stt_s / heard:.2f})",
            stt_s * 1000, "ms", stt_s / base, against),
        Row(bench, f"generate {tokens} tokens ({tokens / llm_s:.0f} tokens/s)",
            llm_s * 1000, "ms", llm_s / base, against),
        Row(bench, f"synthesize {heard:.1f} s of speech (RTF {tts_s / heard:.3f})",
            tts_s * 1000, "ms", tts_s / base, against),
    ]  # fmt: skip


def main() -> None:
    run_rounds(__doc__, rows)


if __name__ == "__main__":
    main()
