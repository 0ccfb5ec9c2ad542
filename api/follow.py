"""Following a job: Server-Sent Events, and waiting for its start or its end without polling.

Both read the job's Redis Stream (models/event_log.py), which the worker appends to; the web
process never asks Celery for results. The row stays the truth: read every few seconds without
news, and whenever Redis fails, so a lost event can delay the end but never hide it.
"""

from __future__ import annotations

import json
import random
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, request, stream_with_context
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from api.access import release_connection, visible
from api.held_requests import Place, hold
from api.openapi.declare import (
    SSE_HEADERS,
    Schema,
    answer,
    documented,
    header,
    json_text,
    schema_ref,
)
from api.schemas import is_resource_id
from models import event_log
from models.errors import InvalidHeader, JobNotFound, ServerBusy
from models.event_log import Event, JobEvents
from models.job_view import JobView
from models.settings import Settings
from models.tables import Job, JobStatus

blueprint = Blueprint("events", __name__)

# How long one blocking read waits before the row is checked and a keep-alive is sent: between
# 8 and 10 s, drawn per read, so that followers who came in together do not all wake together.
BLOCK_SECONDS = 10.0
_BLOCK_SPREAD = 0.2
# Not in the stream: yielded after each blocking read that found nothing (time for a keep-alive).
IDLE = "idle"
# A Redis stream id: milliseconds and a sequence number (each held to 19 digits, inside a 64-bit
# unsigned integer), or 0 for the start. The document declares the same pattern.
EVENT_ID_PATTERN = "^(0|[0-9]{1,19}-[0-9]{1,19})$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
# How often a wait looks whether its client is still there while its job's events come.
LOOK_SECONDS = 0.5


def read_job(job_id: str) -> Job | None:
    """Reads a job's row in a short session of its own (a held-open request may last minutes)."""
    sessions: sessionmaker[Session] = current_app.extensions["voicechat.sessions"]
    with sessions() as session:  # closing it detaches the row, read in full
        job = session.get(Job, job_id)
        if job is not None and job.webhook_url is not None:  # its deliveries, while attached
            session.refresh(job, ["webhook_deliveries"])
        return job


def finished_job(job_id: str, done: Event) -> Job | None:
    """A finished job as its `done` event carries it (issue 23: no second read), else its row;
    a job with a webhook is read too, for the deliveries made meanwhile (another table's)."""
    job = event_log.finished_row(done)
    if job is None or job.webhook_url is not None:
        return read_job(job_id)
    return job


def job_state(job_id: str) -> sa.Row[str, str | None] | None:
    """A job's `status` and owner (`api_key_id`) alone, on a connection of its own: loading the
    whole row as an ORM object cost several times more (a burst of followers' largest cost)."""
    engine: sa.Engine = current_app.extensions["voicechat.reads"]
    with engine.connect() as connection:
        return connection.execute(
            sa.select(Job.status, Job.api_key_id).where(Job.id == job_id)
        ).first()


def follow(
    job_id: str, *, after: str = "0", timeout: float | None = None, row_read: bool = False
) -> Iterator[Event]:
    """Yields a job's events after stream id `after` until `done`, or until `timeout` (no `done`).

    A `done` the stream lost is made from the job's row; each quiet read yields `IDLE`. The first
    read returns at once with whatever was missed, and the row is read if it found nothing; with
    `row_read` (the caller has just read or made the row) it waits for news instead.
    """
    release_connection()  # held from here on: no database connection kept meanwhile
    log: JobEvents = current_app.extensions["voicechat.events"]
    deadline = None if timeout is None else time.monotonic() + timeout
    block = _block_seconds() if row_read else 0.0
    while True:
        remaining = BLOCK_SECONDS if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            batch = log.read(job_id, after, block_ms=int(min(block, remaining) * 1000) or None)
        except (RedisError, OSError):
            batch = []
            time.sleep(min(1.0, remaining))
        for event in batch:
            after = event.id
            yield event
            if event.type == event_log.DONE:
                return
        if not batch:
            state = job_state(job_id)
            if state is None or JobStatus(state.status).terminal:
                status = state and state.status
                yield Event(id=after, type=event_log.DONE, data={"status": status})
                return
        if not batch and block:
            yield Event(id=after, type=IDLE, data={})
        block = _block_seconds()


def _block_seconds() -> float:
    return BLOCK_SECONDS * (1 - _BLOCK_SPREAD * random.random())


def wait_for(job_id: str, timeout: float) -> Job | None:
    """Waits up to `timeout` seconds for a job just submitted to end: its final row, or None
    (also once the client has left, looked at every `LOOK_SECONDS`, freeing its place)."""
    look = time.monotonic() + LOOK_SECONDS
    for event in follow(job_id, timeout=timeout, row_read=True):
        if event.type == event_log.DONE:
            return finished_job(job_id, event)
        if event.type == IDLE or time.monotonic() >= look:
            if client_left():
                return None
            look = time.monotonic() + LOOK_SECONDS
    return None


def wait_for_start(job_id: str, timeout: float) -> bool:
    """Waits up to `timeout` seconds for a job just submitted to send its first event; False on
    timeout or a left client."""
    for event in follow(job_id, timeout=timeout, row_read=True):
        if event.type != IDLE:
            return True
        if client_left():
            return False
    return False


def client_left() -> bool:
    """Whether the client has closed its connection (a readable socket with nothing to read; a
    stream's first write after it left still succeeds). False without a plain socket (TLS)."""
    client = request.environ.get("gunicorn.socket")
    if not isinstance(client, socket.socket) or isinstance(client, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([client], [], [], 0)
        return bool(readable) and client.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# An SSE comment: ignored by clients, it keeps proxies from closing a quiet connection.
KEEP_ALIVE = ": keep-alive\n\n"


def sse_event(data: Any, event: str | None = None, event_id: str | None = None) -> str:
    """One Server-Sent Event: its type and id when given, and `data` as one line of JSON."""
    lines = [f"event: {event}"] if event else []
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def sse_response(chunks: Iterator[Any], mimetype: str = "text/event-stream") -> Response:
    """Streams Server-Sent Events (or another `mimetype`), unbuffered by proxies."""
    response = Response(stream_with_context(chunks), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the stream
    return response


def _data(description: str, required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(required or properties),
    }


def _event(event: str, description: str, data: Schema) -> Schema:
    """One kind of job event, as a parsed Server-Sent Event."""
    fields = {"event": {"const": event}, "id": EVENT_ID, "data": json_text(data)}
    return _data(description, ("event", "data"), **fields)


EVENT_ID = {"type": "string", "pattern": EVENT_ID_PATTERN}
_WHOLE = {"type": "integer", "minimum": 1}
_SECONDS = {"type": "number", "minimum": 0}
_TEXT = _data("A piece of text.", text={"type": "string"})
# Each event a job's stream may carry, in the order they come.
JOB_EVENTS = [
    _event(
        "status",
        "A worker started the job (`running`, with the attempt), or an attempt whose worker was "
        "lost ended and the job is queued again (`queued`, with the lost attempt). The `queued` "
        "event always comes before the next attempt's first event, whose events then start "
        "over; nothing of the lost attempt follows it.",
        _data(
            "The job's new status.",
            ("status",),
            status={"type": "string", "enum": ["running", "queued"]},
            attempt=_WHOLE,
        ),
    ),
    _event(
        "stage",
        "The job entered a pipeline stage.",
        _data("The stage entered.", stage=schema_ref("Stage")),
    ),
    _event("transcript", "What the recogniser heard.", _TEXT),
    _event("delta", "The next piece of the reply, as the model produces it.", _TEXT),
    _event(
        "speech",
        "A sentence of the spoken reply is synthesized, while the model may still be generating "
        "the next; `GET /v1/jobs/{job_id}/audio` streams it.",
        _data(
            "One sentence of the spoken reply: its place, its words, its length.",
            index={"type": "integer", "minimum": 0},
            attempt=_WHOLE,
            text={"type": "string"},
            seconds=_SECONDS,
            rate={"type": "integer", "description": "Samples per second."},
        ),
    ),
    _event("audio", "The spoken reply is stored.", _data("The reply's length.", seconds=_SECONDS)),
    _event(
        "done",
        "The job, as `GET /v1/jobs/{job_id}` returns it; once per job and always the last "
        "event, after which the stream closes.",
        schema_ref("JobView"),
    ),
]
_STREAM = {
    "description": "Server-Sent Events; this schema describes each event (`event`, `id`, and "
    "`data`, one line of JSON), as OpenAPI 3.2's `itemSchema` does. The stream opens with "
    "`retry: 2000`, and a `: keep-alive` comment is sent after every {quiet} s of quiet.",
    "oneOf": JOB_EVENTS,
}


@blueprint.get("/v1/jobs/<job_id>/events")
@documented(
    {
        200: answer(
            "The event stream.",
            body={"text/event-stream": {"schema": _STREAM}},
            headers=SSE_HEADERS,
        ),
        204: answer(
            "The event named by `Last-Event-ID` or `after` is the job's `done` or later: the "
            "stream has ended (a browser's `EventSource` does not reconnect after a 204)."
        ),
    },
    errors=(InvalidHeader, JobNotFound, ServerBusy),
    notes={503: "Every held-request place is checked before the job is looked up."},
    parameters=(
        header(
            "Last-Event-ID",
            "Resume after this event `id`; `0` replays from the start. Wins over `after`, "
            "though both are checked when both are sent.",
            EVENT_ID,
        ),
        {
            "name": "after",
            "in": "query",
            "description": "Like `Last-Event-ID`, for clients that cannot set it.",
            "schema": EVENT_ID,
        },
    ),
    facts={"quiet": f"{BLOCK_SECONDS * (1 - _BLOCK_SPREAD):g} to {BLOCK_SECONDS:g}"},
)
def get_job_events(job_id: str) -> Response:
    """Follow a job.

    Streams the job's events as they happen (also linked as `events_url`) until the final
    `done`; a browser's `EventSource` resumes with `Last-Event-ID`. A finished job's stream
    replays what is kept and ends at once; events are kept EVENTS_TTL_SECONDS
    ({events_ttl_seconds} s here) after the last one, then a `done` is made from the job.
    """
    after = _resume_point()
    if not is_resource_id(job_id):
        raise JobNotFound(f"No job has the id {job_id!r}.")
    log: JobEvents = current_app.extensions["voicechat.events"]
    try:
        seen_the_end = log.ended_by(job_id, after)
    except (RedisError, OSError):
        seen_the_end = False  # the stream answers from the row instead
    if seen_the_end:
        _visible_job(job_id)  # another key learns nothing, not even that the stream ended
        # 204 is the answer after which EventSource does not reconnect (HTML: any status but
        # 200 fails the connection for good); another `done` would have it loop for ever.
        return Response(status=204)
    place = hold()
    try:
        state = _visible_job(job_id)
    except BaseException:
        place.release()
        raise
    going = not JobStatus(state.status).terminal
    response = sse_response(_event_stream(job_id, after, place, going))
    # The place is freed when the server closes the response, even one never iterated.
    response.call_on_close(place.release)
    return response


def register_turns(app: Flask, settings: Settings) -> None:
    """Followers arriving together start in turn: FOLLOWER_TURNS at once per process, the key
    lookup included, each waiting at most FOLLOWER_TURN_SECONDS, then `503` `server_busy`. All at
    once, each shares the CPU with every other and all start late (`bench.followers --rate 0`,
    paired with FOLLOWER_TURNS=1000, turns waiting 0.75 s: the last answered after 2.9-3.5 s and
    `/healthz` p99 1.7-1.8 s, against 1.5 s and 0.3-0.4 s in turn). The wait is short so that a
    crowd's every follower is answered, stream or 503, within a second of coming."""
    turns = app.extensions["voicechat.follower_turns"] = threading.BoundedSemaphore(
        settings.follower_turns
    )
    endpoint = f"{blueprint.name}.{get_job_events.__name__}"

    @app.before_request
    def _take_turn() -> None:
        if request.endpoint != endpoint:
            return
        if not turns.acquire(timeout=settings.follower_turn_seconds):
            raise ServerBusy(
                "Too many event streams are starting at once; retry in a second.",
                retry_after=1,
            )
        g.follower_turn = True

    def _end_turn() -> None:
        if g.pop("follower_turn", False):
            turns.release()

    @app.after_request  # the stream is set up: it reads Redis from here on, in no turn
    def _turn_ends(response: Response) -> Response:
        _end_turn()
        return response

    app.teardown_request(lambda _error: _end_turn())  # a request that ended otherwise


def _resume_point() -> str:
    """The event id to resume after: `Last-Event-ID`, else `after`, else `0`; both checked."""
    header, query = request.headers.get("Last-Event-ID"), request.args.get("after")
    for name, value in (("Last-Event-ID", header), ("after", query)):
        if value is not None and not _EVENT_ID.fullmatch(value):
            raise InvalidHeader(f"{name} must be an event id this stream sent.")
    return header if header is not None else query if query is not None else "0"


def _visible_job(job_id: str) -> sa.Row[str, str | None]:
    """The state of the caller's job of this id; another key's is not found (`JobNotFound`)."""
    state = job_state(job_id)
    if state is None or not visible(state.api_key_id):
        raise JobNotFound(f"No job has the id {job_id!r}.")
    return state


def _event_stream(job_id: str, after: str, place: Place, going: bool) -> Iterator[str]:
    """The SSE text of a job's events, holding `place` until it ends; `going`: see `follow`."""
    with place:
        yield "retry: 2000\n\n"
        for event in follow(job_id, after=after, row_read=going):
            if event.type == IDLE:
                if client_left():
                    return
                yield KEEP_ALIVE
            elif event.type == event_log.DONE:
                # A job already over when the stream opened: its row as it is now (retention
                # may have expired its audio since the `done` event was written).
                job = finished_job(job_id, event) if going else read_job(job_id)
                public = {name: value for name, value in event.data.items() if name != "job"}
                done = JobView.of(job).model_dump(mode="json") if job else public
                yield sse_event(done, event_log.DONE, event.id or None)
            else:
                yield sse_event(event.data, event.type, event.id)
