"""Transcription latency and word error rate together, for each faster-whisper setting.

Run: `.venv/bin/python -m bench.ears [--questions N] [--show-misses]`. The first N questions of
`bench/questions.jsonl` are spoken at run time, into a temporary folder, by the packaged Piper
voice at three `length_scale`s and by espeak-ng (Debian's `espeak-ng`) in three voices and
speeds, resampled to 16 kHz. Each clip is then transcribed through the service's
`FasterWhisperTranscriber` under every combination of beam size, VAD trimming,
`without_timestamps` and threads, for the packaged Whisper base (and `WHISPER_MODEL_DIR`, when
set). The combinations take turns clip by clip, so a busy machine slows them alike. Per
combination: the median latency and CPU time (all threads; the steadier figure on a busy
machine), each against the adapter's former options on 2 threads, and the word error rate over
all clips.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from bench.answers import load_questions
from bench.table import Row, markdown
from models.errors import NoSpeech
from models.settings import Settings
from worker.engines.faster_whisper import FasterWhisperTranscriber
from worker.engines.model_files import piper_voice_path
from worker.engines.piper import PACKAGED_VOICE, PiperSynthesizer

PIPER_LENGTH_SCALES = (0.8, 1.0, 1.25)
ESPEAK_VOICES = (("en-us", 140), ("en-us", 190), ("en", 165))
BEAMS, VADS, NO_TIMESTAMPS, THREADS = (5, 1), (True, False), (False, True), (2, 1)


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: what the error rate compares."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_errors(reference: list[str], heard: list[str]) -> int:
    """Word-level edit distance (substitutions, deletions, insertions); jiwer would add
    rapidfuzz to the environment for these eight lines."""
    row = list(range(len(heard) + 1))
    for i, said in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, word in enumerate(heard, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (said != word))
    return row[-1]


def spoken_clips(texts: list[str], folder: Path) -> list[tuple[str, str, np.ndarray]]:
    """Each text in every voice: (voice, text, 16 kHz mono float32)."""
    clips = []
    piper = PiperSynthesizer({PACKAGED_VOICE: piper_voice_path()})
    for text in texts:
        for scale in PIPER_LENGTH_SCALES:
            audio = piper.synthesize(text, voice=PACKAGED_VOICE, speed=1 / scale)
            clips.append((f"piper length_scale {scale}", text, (audio.samples, audio.sample_rate)))
        for voice, rate in ESPEAK_VOICES:
            path = folder / f"{len(clips)}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text],
                           check=True)  # fmt: skip
            with wave.open(str(path)) as wav:
                samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
                clips.append((f"espeak-ng {voice} {rate}", text, (samples, wav.getframerate())))
    return [
        (voice, text, soxr.resample(samples.astype(np.float32) / 32768, rate, 16_000))
        for voice, text, (samples, rate) in clips
    ]


def label(beam: int, vad: bool, no_timestamps: bool, threads: int) -> str:
    """One combination, as the table names it."""
    return (f"beam {beam}, VAD {'on' if vad else 'off'}, "
            f"{'without' if no_timestamps else 'with'} timestamps, threads {threads}")  # fmt: skip


def run_model(settings: Settings, clips: list, show_misses: bool) -> dict[str, list]:
    """Every clip under every combination: per label, each clip's seconds, CPU seconds, errors."""
    transcribers = {}
    for threads in THREADS:
        transcribers[threads] = FasterWhisperTranscriber.from_settings(
            settings.model_copy(update={"llm_threads": threads})
        )
        transcribers[threads].transcribe(clips[0][2])  # warm-up
    combos = list(itertools.product(BEAMS, VADS, NO_TIMESTAMPS, THREADS))
    results: dict[str, list] = {label(*combo): [] for combo in combos}
    for voice, text, samples in clips:
        for beam, vad, no_timestamps, threads in combos:
            transcriber = transcribers[threads]
            transcriber.options = {
                "beam_size": beam, "vad_filter": vad, "without_timestamps": no_timestamps
            }  # fmt: skip
            started, cpu = time.perf_counter(), time.process_time()
            try:
                heard = transcriber.transcribe(samples).text
            except NoSpeech:
                heard = ""
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            name = label(beam, vad, no_timestamps, threads)
            errors = word_errors(words(text), words(heard))
            if errors and show_misses:
                print(f"{name} | {voice} | {text!r} heard {heard!r}")
            results[name].append((seconds, cpu, errors))
    return results


def rows(questions: int = 20, show_misses: bool = False) -> list[Row]:
    """Median latency and word error rate of each setting combination, per installed model."""
    settings = Settings.from_env()
    texts = [str(item["question"]) for item in load_questions()[:questions]]
    with tempfile.TemporaryDirectory() as folder:
        clips = spoken_clips(texts, Path(folder))
    reference_words = sum(len(words(text)) for _, text, _ in clips)
    speech_s = statistics.median(len(samples) / 16_000 for _, _, samples in clips)
    models = [settings] if settings.whisper_model_dir else []
    models.append(settings.model_copy(update={"whisper_model_dir": ""}))
    table = []
    for model in models:
        name = Path(model.whisper_model_dir).name if model.whisper_model_dir else "Whisper base"
        results = run_model(model, clips, show_misses)
        base_name = label(BEAMS[0], VADS[0], NO_TIMESTAMPS[0], THREADS[0])
        base_s, base_cpu = (statistics.median(x[i] for x in results[base_name]) for i in (0, 1))
        bench = f"ears, {len(clips)} clips (median {speech_s:.1f} s), {name}"
        for combo, runs in results.items():
            median_s, cpu = (statistics.median(run[i] for run in runs) for i in (0, 1))
            errors = sum(run[2] for run in runs)
            table += [
                Row(
                    bench, f"{combo}: latency", median_s * 1000, "ms", median_s / base_s, base_name
                ),
                Row(bench, f"{combo}: CPU time", cpu * 1000, "ms", cpu / base_cpu, base_name),
                Row(bench, f"{combo}: word error rate", errors / reference_words * 100, "%"),
            ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20, help="how many questions to speak")
    parser.add_argument("--show-misses", action="store_true", help="print each misheard clip")
    args = parser.parse_args()
    print(markdown(rows(args.questions, args.show_misses)))


if __name__ == "__main__":
    main()
