"""The public JSON forms of jobs and conversations (see the README's API reference)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for

from models.job import Conversation, InputKind, Job, JobStatus, Turn


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def render_job(job: Job) -> dict[str, Any]:
    """Returns the public JSON form of a job (see the README's API reference)."""
    status = job.job_status
    result = None
    if status is JobStatus.SUCCEEDED:
        has_audio = job.reply_audio_file is not None
        result = {
            "transcript": job.transcript,
            "text": job.reply_text or "",
            "audio_url": url_for("jobs.get_job_audio", job_id=job.id) if has_audio else None,
            "audio_seconds": job.reply_audio_seconds,
            "language": job.transcript_language,
            "finish_reason": job.finish_reason,
            "usage": (
                {
                    "prompt_tokens": job.prompt_tokens,
                    "completion_tokens": job.completion_tokens,
                    "total_tokens": job.prompt_tokens + (job.completion_tokens or 0),
                }
                if job.prompt_tokens is not None
                else None
            ),
        }
    input_view: dict[str, Any] = {"kind": job.input_kind}
    if job.input_kind == InputKind.TEXT.value:
        input_view["text"] = job.input_text
    else:
        input_view["audio_seconds"] = job.input_audio_seconds
    return {
        "id": job.id,
        "operation": job.operation,
        "conversation_id": job.conversation_id,
        "status": job.status,
        "stage": job.stage,
        "reply": job.reply_format,
        "input": input_view,
        "result": result,
        "error": (
            {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
        ),
        "timings": {
            "queued_s": _seconds(job.created_at, job.started_at),
            "transcribe_s": job.transcribe_s,
            "generate_s": job.generate_s,
            "synthesize_s": job.synthesize_s,
            "total_s": _seconds(job.created_at, job.finished_at),
        },
        "attempts": job.attempts,
        "events_url": url_for("events.job_events", job_id=job.id),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def render_conversation(conversation: Conversation, turns: list[Turn]) -> dict[str, Any]:
    """Returns the public JSON form of a conversation with its turns, oldest first."""
    return {
        "id": conversation.id,
        "system": conversation.system,
        "created_at": _iso(conversation.created_at),
        "turns": [
            {
                "role": turn.role,
                "content": turn.content,
                "job_id": turn.job_id,
                "created_at": _iso(turn.created_at),
            }
            for turn in turns
        ],
    }
