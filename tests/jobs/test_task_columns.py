"""The task's one map from typed stage results to the job row's columns (no Redis, no models)."""

from __future__ import annotations

import numpy as np

from models.tables import Job
from worker.engines import Audio, Reply, Segment, Transcript
from worker.tasks import _checkpoint_columns, audio_columns, reply_columns, transcript_columns

TRANSCRIPT = Transcript(
    "hello there", "en", seconds=0.25, segments=(Segment(0.0, 1.5, "hello there"),)
)
REPLY = Reply("Hi.", prompt_tokens=12, completion_tokens=2, finish_reason="stop", seconds=0.5)
AUDIO = Audio(samples=np.zeros(22_050, np.int16), sample_rate=22_050, seconds=0.75)


def test_every_mapped_name_is_a_column_of_the_job_table() -> None:
    columns = set(Job.__table__.columns.keys())
    for mapped in (
        transcript_columns(TRANSCRIPT, with_segments=True),
        reply_columns(REPLY),
        audio_columns(AUDIO, "job.wav"),
    ):
        assert set(mapped) <= columns, set(mapped) - columns


def test_results_map_to_their_columns() -> None:
    assert transcript_columns(TRANSCRIPT) == {
        "transcript": "hello there",
        "transcript_language": "en",
        "transcribe_s": 0.25,
    }
    assert transcript_columns(TRANSCRIPT, with_segments=True)["transcript_segments"] == [
        {"start": 0.0, "end": 1.5, "text": "hello there"}
    ]
    assert reply_columns(REPLY) == {
        "reply_text": "Hi.",
        "generate_s": 0.5,
        "prompt_tokens": 12,
        "completion_tokens": 2,
        "finish_reason": "stop",
    }
    assert audio_columns(AUDIO, "job.wav") == {
        "reply_audio_file": "job.wav",
        "reply_audio_seconds": 1.0,
        "synthesize_s": 0.75,
    }


def test_a_checkpoint_holds_what_a_redelivered_job_resumes_from() -> None:
    # worker/tasks.py reads `transcript` and `reply_text` back into JobInput on redelivery.
    assert _checkpoint_columns(TRANSCRIPT)["transcript"] == "hello there"
    assert "transcript_segments" not in _checkpoint_columns(TRANSCRIPT)
    assert _checkpoint_columns(REPLY)["reply_text"] == "Hi."
    assert _checkpoint_columns(None) == {}
