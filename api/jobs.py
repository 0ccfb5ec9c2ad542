"""The job routes: submit a prompt, read a job, fetch its spoken reply, list jobs."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, send_file, url_for

from api.submission import parse_submission
from models import jobs as job_rows
from models.errors import (
    AudioNotFound,
    InvalidOption,
    JobNotFinished,
    JobNotFound,
    VoiceChatError,
)
from models.job import InputKind, Job, JobStatus, new_job_id
from models.storage import FileStore

_LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)

MAX_PAGE = 100
DEFAULT_PAGE = 20


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
        }
    input_view: dict[str, Any] = {"kind": job.input_kind}
    if job.input_kind == InputKind.TEXT.value:
        input_view["text"] = job.input_text
    else:
        input_view["audio_seconds"] = job.input_audio_seconds
    return {
        "id": job.id,
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
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _load(job_id: str) -> Job:
    job: Job | None = g.db.get(Job, job_id) if job_id.isalnum() and len(job_id) <= 32 else None
    if job is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return job


@blueprint.post("/v1/jobs")
def create_job() -> Response:
    """Validates a prompt, stores it, enqueues it and answers 202 at once."""
    settings = current_app.extensions["voicechat.settings"]
    submission = parse_submission(request, settings)
    job_id = new_job_id()
    job = Job(
        id=job_id,
        status=JobStatus.QUEUED.value,
        reply_format=submission.reply.value,
        options=submission.options,
    )
    if submission.text is not None:
        job.input_kind = InputKind.TEXT.value
        job.input_text = submission.text
    else:
        assert submission.audio is not None and submission.audio_info is not None
        uploads: FileStore = current_app.extensions["voicechat.uploads"]
        # The file is stored before the row exists, so a queued row always has its audio.
        job.input_kind = InputKind.AUDIO.value
        job.input_audio_file = uploads.write(job_id, submission.audio)
        job.input_audio_seconds = round(submission.audio_info.seconds, 3)
    g.db.add(job)
    try:
        g.db.commit()
    except Exception:
        if job.input_audio_file:  # no row will ever point at it
            current_app.extensions["voicechat.uploads"].path(job.input_audio_file).unlink(
                missing_ok=True
            )
        raise
    try:
        current_app.extensions["voicechat.queue"].enqueue(job_id)
    except Exception as error:
        # Nothing will ever run this job: end it now rather than leave it queued forever.
        code = error.code if isinstance(error, VoiceChatError) else "internal_error"
        job_rows.fail(g.db, job_id, code, "The job could not be queued.")
        raise
    _LOGGER.info(
        "job submitted job_id=%s input=%s reply=%s", job_id, job.input_kind, job.reply_format
    )
    response = jsonify(render_job(job))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return response


@blueprint.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Returns a job's current state."""
    return jsonify(render_job(_load(job_id)))


@blueprint.get("/v1/jobs/<job_id>/audio")
def get_job_audio(job_id: str) -> Response:
    """Returns the spoken reply as a 16-bit PCM mono WAV."""
    job = _load(job_id)
    if not job.job_status.terminal:
        raise JobNotFinished(f"Job {job_id} is {job.status}; its audio is not ready yet.")
    results: FileStore = current_app.extensions["voicechat.results"]
    if job.reply_audio_file is None or not results.exists(job.reply_audio_file):
        raise AudioNotFound(f"Job {job_id} has no spoken reply.")
    return send_file(
        results.path(job.reply_audio_file),
        mimetype="audio/wav",
        download_name=f"{job_id}.wav",
        conditional=True,
        max_age=3600,
    )


@blueprint.get("/v1/jobs")
def list_jobs() -> Response:
    """Lists jobs newest first, with an opaque cursor for the next page."""
    unknown = sorted(set(request.args) - {"status", "limit", "cursor"})
    if unknown:
        raise InvalidOption(f"Unknown query parameter {unknown[0]!r}.", field=unknown[0])
    status = None
    if raw_status := request.args.get("status"):
        try:
            status = JobStatus(raw_status)
        except ValueError:
            allowed = ", ".join(s.value for s in JobStatus)
            raise InvalidOption(f"status must be one of {allowed}.", field="status") from None
    raw_limit = request.args.get("limit", str(DEFAULT_PAGE)).strip()
    valid = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3
    if not valid or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidOption(f"limit must be a whole number from 1 to {MAX_PAGE}.", field="limit")
    page = job_rows.list_jobs(
        g.db, status=status, limit=int(raw_limit), cursor=request.args.get("cursor") or None
    )
    return jsonify(
        {"data": [render_job(job) for job in page.jobs], "next_cursor": page.next_cursor}
    )
