"""Time to first audio of a voice reply, on each preset in the same run, with its breakdown.

Run: `.venv/bin/python -m bench.first_audio [--rounds N]`. Starts the service on `LLM_PRESET=fast`,
then on `quality` (the default), and asks each for voice replies: to `bench.stages.QUESTION`
spoken (Piper says it, about 2 s) and typed, and to a typed question with a reply of several
sentences. Each round submits the job and at once opens `GET /v1/jobs/{id}/audio`, which streams
the reply while the worker makes it: the time to its first audio bytes (after the WAV header) is
split, by the job's timings and its events' stream ids (Redis's clock, in ms), into transcription,
the first clause (generation until the first piece is cut), its synthesis (the reply's synthesis
time times the piece's share of the audio) and the service (the rest: upload, queue, events,
stream). Quality's first audio is set against fast's; text→voice's also against the whole reply's
synthesis time.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass

import requests

from bench.service import client, running
from bench.stages import QUESTION
from bench.table import Row, run_rounds
from models.settings import Settings
from worker.engines import build_synthesizer

# Name: (spoken, prompt, max_tokens).
CASES = {
    "voice→voice": (True, QUESTION, 48),
    "text→voice": (False, QUESTION, 48),
    "text→voice, several sentences": (False, "Tell me three facts about the moon.", 80),
}
PRESETS = ("fast", "quality")


@dataclass(frozen=True)
class Timed:
    """One round's seconds: to the first audio, its parts, and the whole reply's synthesis."""

    first: float
    transcription: float
    clause: float
    synthesis: float
    whole_synthesis: float

    @property
    def service(self) -> float:
        return self.first - self.transcription - self.clause - self.synthesis


def spoken_question() -> bytes:
    """`QUESTION` as a WAV, said by the service's default Piper voice."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env({"DATA_DIR": data_dir})
        return build_synthesizer(settings).synthesize(QUESTION, voice=settings.tts_voice).to_wav()


def once(
    http: requests.Session, url: str, prompt: str, max_tokens: int, wav: bytes | None
) -> Timed:
    """Submits one voice reply, streams it, and splits its time to the first audio."""
    options = {"reply": "voice", "max_tokens": str(max_tokens), "temperature": "0"}
    files = {"audio": ("question.wav", wav, "audio/wav")} if wav else None
    started = time.time()
    given = options if wav else {"text": prompt, **options}
    job_id = http.post(f"{url}/v1/jobs", data=given, files=files, timeout=60).json()["id"]
    first, seen = None, 0
    with http.get(f"{url}/v1/jobs/{job_id}/audio", stream=True, timeout=600) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(chunk_size=None):
            seen += len(chunk)
            if first is None and seen > 44:  # past the WAV header: sound
                first = time.time() - started
    job = http.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
    events = _events(http, url, job_id)
    generating, (spoken_at, piece) = events["generating"], events["speech"]
    timings = job["timings"]
    synthesis = timings["synthesize_s"] * piece["seconds"] / job["result"]["audio_seconds"]
    return Timed(
        first=first or time.time() - started,
        transcription=timings["transcribe_s"] or 0.0,
        clause=spoken_at - generating[0] - synthesis,
        synthesis=synthesis,
        whole_synthesis=timings["synthesize_s"],
    )


def _events(http: requests.Session, url: str, job_id: str) -> dict[str, tuple[float, dict]]:
    """A finished job's first event of each type (stages by name): its time and its data."""
    found: dict[str, tuple[float, dict]] = {}
    event_id = kind = ""
    with http.get(f"{url}/v1/jobs/{job_id}/events", stream=True, timeout=60) as answer:
        for line in answer.iter_lines(decode_unicode=True):
            field, _, value = line.partition(": ")
            if field == "id":
                event_id = value
            elif field == "event":
                kind = value
            elif field == "data" and event_id:
                data = json.loads(value)
                name = data["stage"] if kind == "stage" else kind
                found.setdefault(name, (int(event_id.split("-")[0]) / 1000, data))
    return found


def rows(rounds: int = 5) -> list[Row]:
    """The first-audio figures of both presets as table rows, quality's against fast's."""
    wav = spoken_question()
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for preset in PRESETS:
        with running(LLM_PRESET=preset) as url:
            http = client(url)
            for case, (spoken, prompt, max_tokens) in CASES.items():
                question = wav if spoken else None
                once(http, url, prompt, max_tokens, question)  # warm-up
                runs = [once(http, url, prompt, max_tokens, question) for _ in range(rounds)]
                parts = ("first", "transcription", "clause", "synthesis", "service")
                medians[preset, case] = {
                    part: statistics.median(getattr(run, part) for run in runs) for part in parts
                }
                medians[preset, case]["whole synthesis"] = statistics.median(
                    run.whole_synthesis for run in runs
                )
    table = []
    for (preset, case), m in medians.items():
        fast = medians["fast", case]["first"]
        parts = ", ".join(
            f"{name} {m[part] * 1000:.0f}"
            for name, part in (("transcription", "transcription"), ("first clause", "clause"),
                               ("its synthesis", "synthesis"), ("service", "service"))
        )  # fmt: skip
        table.append(Row(f"first audio, {case}", f"{preset}: first audio", m["first"] * 1000,
                         "ms", m["first"] / fast, f"fast's; ms: {parts}"))  # fmt: skip
        if case.endswith("several sentences"):
            whole = m["whole synthesis"]
            against = f"the reply's synthesis {whole * 1000:.0f} ms"
            measure = f"{preset}: first audio, to the reply's synthesis"
            table.append(Row(f"first audio, {case}", measure, m["first"] * 1000, "ms",
                             m["first"] / whole, against))  # fmt: skip
    return table


def main() -> None:
    run_rounds(__doc__, rows)


if __name__ == "__main__":
    main()
