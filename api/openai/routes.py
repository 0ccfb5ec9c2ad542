"""OpenAI-compatible routes over the same queue and worker: chat, transcription, speech, models.

Every request becomes a job like any other (its id in `X-Job-Id`) that the route follows to
answer; errors use OpenAI's `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from pydantic import BaseModel
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import HTTPException

from api.cancellation import CLIENT_LEFT, WAIT_RAN_OUT, cancel_unanswered, canceled_on_leave
from api.errors import status_for, with_retry_after
from api.follow import (
    IDLE,
    KEEP_ALIVE,
    client_left,
    finished_job,
    follow,
    read_job,
    sse_event,
    sse_response,
    wait_for,
    wait_for_start,
)
from api.held_requests import Place, hold
from api.jobs import UPLOAD_MEDIA_TYPES, queued_job, submit
from api.limits import breach
from api.openai import formats
from api.openai.schemas import (
    OPENAI_CODES,
    TTS_MODEL_IDS,
    WHISPER_MODEL_ID,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ErrorKind,
    ModelList,
    OpenAIError,
    OpenAIErrorBody,
    SpeechRequest,
    Transcription,
    TranscriptionRequest,
    TranscriptSegment,
    VerboseTranscription,
)
from api.openapi.declare import SSE_HEADERS, answer, documented, family, json_body, ref, schema_ref
from api.request_validation import parse_json_object, single_values, validate
from api.speech_stream import stream_reply
from api.wait_bound import check_reachable, timed_out
from models import errors, event_log
from models.audio import inspect_upload
from models.job_view import Usage
from models.settings import Settings
from models.storage import Store
from models.tables import Job, JobStatus, Operation, ReplyFormat
from models.transitions import WORKER_LOST

blueprint = Blueprint("openai", __name__)

GRANULARITIES = "timestamp_granularities[]"
# What a route that makes a job and waits for it may answer besides its own refusals: the
# model's check, the limits, the wait, and the job's own failure (its `error.code`, as a 500).
JOB_ROUTE_ERRORS: tuple[type[errors.VoiceChatError], ...] = (
    errors.ModelNotFound,
    errors.PayloadTooLarge,
    errors.JobCanceled,
    errors.TooManyUnfinishedJobs,
    errors.ServerBusy,
    errors.QueueFull,
    errors.BrokerUnavailable,
    errors.WaitTooLong,
    errors.WaitTimedOut,
    errors.EngineUnavailable,
    errors.JobTimedOut,
    errors.WorkerLost,
    errors.PipelineError,
    errors.VoiceChatError,
)
# The job the request became, on every answer of a route that makes one.
JOB_ID = {"X-Job-Id": ref("headers", "JobId")}
NOTES = {
    503: "Each but `wait_timeout` is answered once the request is valid, before a job is made "
    "(`broker_unavailable`: the job made is recorded failed); `wait_timeout` after "
    "OPENAI_WAIT_SECONDS ({openai_wait_seconds} s here), its job canceled."
}


def _answer(body: BaseModel, status: int = 200) -> Response:
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = status
    return response


def error_body(error: errors.VoiceChatError) -> OpenAIError:
    """OpenAI's error object for a domain error (429s as OpenAI's: `type` `requests`)."""
    status = status_for(error)
    kind: ErrorKind = "invalid_request_error" if status < 500 else "server_error"
    detail = OpenAIErrorBody(
        message=error.detail,
        type="requests" if status == 429 else kind,
        param=error.extra.get("field"),
        code=OPENAI_CODES.get(error.code, error.code),
    )
    return OpenAIError(error=detail)


@blueprint.errorhandler(errors.VoiceChatError)
def _openai_error(error: errors.VoiceChatError) -> Response:
    return with_retry_after(_answer(error_body(error), status_for(error)), error)


@blueprint.errorhandler(RateLimitExceeded)
def _openai_rate_limited(_error: RateLimitExceeded) -> Response:
    return _openai_error(breach())


@blueprint.errorhandler(HTTPException)
def _openai_http_error(error: HTTPException) -> Response:
    detail = OpenAIErrorBody(
        message=error.description or error.name,
        type="invalid_request_error",
        param=None,
        code=None,
    )
    return _answer(OpenAIError(error=detail), error.code or 500)


@blueprint.get("/v1/models")
@documented(
    {200: answer("The models.", "ModelList")},
    facts={"whisper": WHISPER_MODEL_ID, "tts": ", ".join(f"`{i}`" for i in TTS_MODEL_IDS)},
)
def list_models() -> Response:
    """List models.

    The models this service answers with, one per stage: the language model (its id is
    LLM_MODEL, else the file name of LLM_MODEL_PATH without extension, else LLM_PRESET's model:
    `Qwen2.5-Coder-1.5B-Instruct` or `SmolLM2-135M-Instruct` for `fast`), `{whisper}` for
    transcription and {tts} for speech.
    """
    return _answer(ModelList.of(current_app.extensions["voicechat.settings"]))


def _json_object() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise errors.UnsupportedMediaType("Send the request body as application/json.")
    return parse_json_object(request.get_data(cache=False))


def _submit_and_wait(
    job: Job, settings: Settings, audio: bytes | None = None, extension: str = "wav"
) -> Job:
    """Submits `job` and waits up to OPENAI_WAIT_SECONDS for it to end; raises its own error if
    it failed."""
    check_reachable(settings)  # refused with 503 before any job is made
    with hold():  # likewise
        submit(job, audio, extension)
        finished = wait_for(job.id, settings.openai_wait_seconds) or _unanswered(job.id, settings)
    if finished.status != JobStatus.SUCCEEDED.value:
        raise errors.error_for_code(
            finished.error_code or "internal_error", finished.error_message or ""
        )
    return finished


def _submit_and_stream(
    job: Job, settings: Settings, respond: Callable[[Place], Response]
) -> Response:
    """Submits `job`, waits up to OPENAI_WAIT_SECONDS for it to start (or end), then answers
    with the stream `respond` makes holding the place: a streamed answer's 200 comes once
    there is something to stream. The place is released however the stream ends, or if none."""
    check_reachable(settings)  # refused with 503 before any job is made
    place = hold()  # likewise
    try:
        submit(job)
        if not wait_for_start(job.id, settings.openai_wait_seconds):
            _unanswered(job.id, settings, stream=True)
        response = respond(place)
    except BaseException:
        place.release()
        raise
    response.call_on_close(place.release)  # also when the stream is never read
    return response


def _unanswered(job_id: str, settings: Settings, *, stream: bool = False) -> Job:
    """Cancels the job of a wait that ended without it and raises why (JobCanceled: the
    client left; WaitTimedOut: a 503 that OpenAI's SDKs retry, so a job left running would run
    twice); returns the job if it ended meanwhile."""
    left = client_left()
    if not cancel_unanswered(job_id, CLIENT_LEFT if left else WAIT_RAN_OUT):
        ended = read_job(job_id)
        if ended is not None:
            return ended
    if left:
        raise errors.JobCanceled(f"The client left; job {job_id} is canceled.")
    raise timed_out(job_id, settings, stream=stream)


# The speech formats sent as a stream (the others need the whole recording to encode).
STREAMED_SPEECH = frozenset({"wav", "pcm"})


@blueprint.post("/v1/chat/completions")
@documented(
    {
        200: answer(
            "The completion; a stream of chunks with `stream: true`.",
            body=formats.CHAT_ANSWERS,
            headers={**JOB_ID, **SSE_HEADERS},
        )
    },
    errors=(
        errors.MalformedJson,
        errors.UnsupportedMediaType,
        errors.InvalidOption,
        errors.EmptyText,
        errors.MessagesTooLong,
        errors.ContextLengthExceeded,
        errors.EmptyReply,
        *JOB_ROUTE_ERRORS,
    ),
    notes=NOTES,
    body=json_body("ChatCompletionRequest"),
)
def create_chat_completion() -> Response:
    """Chat completion.

    OpenAI's chat completion, as a job (`X-Job-Id`), whole or streamed as
    `chat.completion.chunk` events. The request waits at most OPENAI_WAIT_SECONDS
    ({openai_wait_seconds} s here) for its job to finish, or, streamed, to start (see 503).

    Beyond the schema: the last message must be the user's (422 `invalid_option`, `param`
    `messages`); all contents together hold at most MAX_CHAT_CHARS ({max_chat_chars} here;
    422 `messages_too_long`); `stream_options` needs `stream: true`.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    chat = validate(ChatCompletionRequest, _json_object(), settings)
    job = queued_job(
        ReplyFormat.TEXT,
        operation=Operation.CHAT.value,
        input_text=chat.prompt,
        history=chat.history(),
        options=chat.generation_options(),
    )
    if chat.stream:

        def respond(place: Place) -> Response:
            head = ChatCompletionChunk(
                id=f"chatcmpl-{job.id}",
                object="chat.completion.chunk",
                created=int(job.created_at.timestamp()),  # set by the submit
                model=chat.model,
                choices=[],
            )
            chunks = _completion_chunks(job.id, head, chat.include_usage, settings, place)
            return sse_response(canceled_on_leave(job.id, chunks))

        response = _submit_and_stream(job, settings, respond)
    else:
        try:
            finished = _submit_and_wait(job, settings)
        except errors.VoiceChatError as error:
            raise _in_chat_terms(error) from None
        response = _answer(ChatCompletion.of(finished, chat.model))
    response.headers["X-Job-Id"] = job.id
    return response


def _in_chat_terms(error: errors.VoiceChatError) -> errors.VoiceChatError:
    """Names `messages` as the parameter of a prompt too long for the window, as OpenAI does."""
    if isinstance(error, errors.ContextLengthExceeded):
        error.extra.setdefault("field", "messages")
    return error


def _completion_chunks(
    job_id: str, head: ChatCompletionChunk, include_usage: bool, settings: Settings, place: Place
) -> Iterator[str]:
    """The events of a streamed completion: the role, each piece, the end (or the job's error),
    the usage when asked for, and `[DONE]`; `place` is held until the stream ends."""
    with place:
        yield sse_event(head.piece(ChatDelta(role="assistant", content="")).body())
        sent = False
        done = None
        # As long as the job may run, and a retry's worth more.
        for event in follow(job_id, timeout=float(settings.task_time_limit * 2)):
            if event.type == event_log.DONE:
                done = event
            elif event.type == event_log.DELTA:
                sent = True
                yield sse_event(head.piece(ChatDelta(content=event.data["text"])).body())
            elif sent and event.type == event_log.STATUS and event.data["status"] == "queued":
                # The worker was lost mid-reply and the job runs again: its text would come a
                # second time. The client gets an error and the end instead (the job goes on).
                lost = errors.error_for_code(
                    WORKER_LOST, f"The reply was cut off: job {job_id} runs again."
                )
                yield sse_event(error_body(lost).model_dump(mode="json"))
                yield formats.STREAM_END
                return
            elif event.type == IDLE:
                if client_left():
                    return
                yield KEEP_ALIVE
        job = read_job(job_id) if done is None else finished_job(job_id, done)
        if job is not None and not job.job_status.terminal:
            # The stream ran out of time before its job ended: no one else waits for it.
            cancel_unanswered(job_id, WAIT_RAN_OUT)
        if job is None or job.status != JobStatus.SUCCEEDED.value:
            code = (job and job.error_code) or errors.WaitTimedOut.code
            message = (job and job.error_message) or "The job did not finish in time; canceled."
            failure = _in_chat_terms(errors.error_for_code(code, message))
            yield sse_event(error_body(failure).model_dump(mode="json"))
        else:
            yield sse_event(head.piece(ChatDelta(), job.finish_reason or "stop").body())
            if include_usage:
                yield sse_event(head.model_copy(update={"usage": Usage.of(job)}).body())
        yield formats.STREAM_END


def _multipart_fields() -> dict[str, Any]:
    """The multipart body as the transcription shape's input: each text field once (but
    `timestamp_granularities[]`, a list), each file part's bytes (a list when repeated)."""
    if request.mimetype != "multipart/form-data":
        raise errors.UnsupportedMediaType(
            "Send the recording as multipart/form-data with a 'file' part."
        )
    try:
        form, files = request.form, request.files
    except ValueError as error:
        raise errors.MalformedMultipart(f"The multipart body cannot be parsed: {error}") from None
    texts = MultiDict(
        [(name, value) for name, value in form.items(multi=True) if name != GRANULARITIES]
    )
    fields = single_values(texts, "form field")
    if GRANULARITIES in form:
        fields[GRANULARITIES] = form.getlist(GRANULARITIES)
    for name in files:
        if name in fields:
            raise errors.InvalidOption(f"{name} is both a text field and a file part.", field=name)
        if name != "file" and name in TranscriptionRequest.model_fields:
            raise errors.InvalidOption(f"{name} must be a text field, not a file part.", field=name)
        parts: list[FileStorage] = files.getlist(name)
        fields[name] = parts[0].read() if len(parts) == 1 else [part.read() for part in parts]
    return fields


@blueprint.post("/v1/audio/transcriptions")
@documented(
    {
        200: answer(
            "The transcript in `response_format`: `json` and `verbose_json` as JSON, `text` as "
            "plain text (with a final newline), `srt` and `vtt` as subtitles.",
            body=formats.TRANSCRIPT_ANSWERS,
            headers=JOB_ID,
        )
    },
    errors=(
        errors.MalformedMultipart,
        errors.MissingInput,
        *family(errors.UnsupportedMediaType),
        errors.InvalidOption,
        *family(errors.InvalidAudio),
        errors.InsufficientStorage,
        *JOB_ROUTE_ERRORS,
    ),
    notes=NOTES,
    body={
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": schema_ref(
                    "TranscriptionRequest",
                    description="The recording (a WAV, WebM, Ogg, MP3, MP4/M4A or FLAC file "
                    "of at most MAX_AUDIO_SECONDS, {max_audio_seconds} s here) as the `file` "
                    "part. `language` defaults to "
                    "WHISPER_LANGUAGE (`{whisper_language}` here).",
                ),
                "encoding": {"file": {"contentType": UPLOAD_MEDIA_TYPES}},
            }
        },
    },
)
def create_transcription() -> Response:
    """Transcribe a recording.

    OpenAI's transcription (json, text, verbose_json, srt or vtt), as a job (`X-Job-Id`) the
    request waits for: at most OPENAI_WAIT_SECONDS ({openai_wait_seconds} s here), see 503. A
    recording without speech gives an empty transcript.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    asked = validate(TranscriptionRequest, _multipart_fields(), settings, from_strings=True)
    info = inspect_upload(asked.file, settings)
    options = asked.recognition_options()
    job = queued_job(
        ReplyFormat.TEXT,
        operation=Operation.TRANSCRIBE.value,
        input_audio_seconds=round(info.seconds, 3),
        options=options,
    )
    try:
        finished = _submit_and_wait(job, settings, asked.file, info.extension)
        heard = VerboseTranscription.of(
            finished.transcript or "",
            finished.transcript_segments or [],
            finished.transcript_language,
            info.seconds,
        )
    except errors.NoSpeech:  # OpenAI answers silence with an empty transcript, not an error
        heard = VerboseTranscription.of("", [], options.get("language"), info.seconds)
    response = _transcript_response(asked.response_format, heard)
    response.headers["X-Job-Id"] = job.id
    return response


def _transcript_response(response_format: str, heard: VerboseTranscription) -> Response:
    if response_format == "json":
        return _answer(Transcription(text=heard.text))
    if response_format == "verbose_json":
        return _answer(heard)
    cues = heard.segments
    if not cues and heard.text:  # no segments: the whole text as one cue
        cues = [TranscriptSegment(id=0, start=0.0, end=heard.duration, text=heard.text)]
    return Response(
        formats.transcript_text(response_format, heard.text, cues),
        mimetype=formats.SUBTITLE_MEDIA_TYPES[response_format],
    )


@blueprint.post("/v1/audio/speech")
@documented(
    {200: answer("The audio, in `response_format`.", body=formats.SPEECH_ANSWERS, headers=JOB_ID)},
    errors=(
        errors.MalformedJson,
        errors.UnsupportedMediaType,
        errors.InvalidOption,
        errors.EmptyText,
        *JOB_ROUTE_ERRORS,
    ),
    notes=NOTES,
    body=json_body("SpeechRequest"),
)
def create_speech() -> Response:
    """Speak a text.

    OpenAI's text to speech, as a job (`X-Job-Id`). `wav` and `pcm` stream each sentence as
    soon as it is spoken (the WAV's sizes say unknown, `0xFFFFFFFF`); the other formats are
    encoded once all is said. OpenAI's voices speak with TTS_VOICE (`{tts_voice}` here). The
    request waits at most OPENAI_WAIT_SECONDS ({openai_wait_seconds} s here) for its job to
    finish, or, streamed, to start (see 503).
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    asked = validate(SpeechRequest, _json_object(), settings)
    job = queued_job(
        ReplyFormat.VOICE,
        operation=Operation.SPEAK.value,
        input_text=asked.input,
        options=asked.speech_options(settings),
    )
    if asked.response_format in STREAMED_SPEECH:
        pcm = asked.response_format == "pcm"
        response = _submit_and_stream(
            job,
            settings,
            lambda place: stream_reply(
                job.id,
                1,
                place,
                with_header=not pcm,
                resample_to=formats.PCM_RATE if pcm else None,
                cancel_on_leave=True,
            ),
        )
    else:
        finished = _submit_and_wait(job, settings)
        results: Store = current_app.extensions["voicechat.results"]
        assert finished.reply_audio_file is not None
        wav = results.read(finished.reply_audio_file)
        audio = formats.encode_speech(wav, asked.response_format)
        response = Response(audio, mimetype=formats.SPEECH_FORMATS[asked.response_format])
    response.headers["X-Job-Id"] = job.id
    return response
