"""The bound on requests held open in one API process: event streams and requests that wait."""

# Each held request (an event stream, `Prefer: wait`, an OpenAI route's wait) sleeps in a Redis
# read: a greenlet (gevent, on PostgreSQL) or one of MAX_HELD_REQUESTS + API_THREADS threads
# (gthread, on SQLite: api/gunicorn_conf.py), so short requests never queue behind followers.
# Past the bound: 503 `server_busy` at once, or for `Prefer: wait` the usual 202 (RFC 7240).

from __future__ import annotations

import threading
from contextlib import AbstractContextManager

from flask import current_app

from models.errors import ServerBusy

# What `Retry-After` says to a refused follower: places free as streams end, which no one can
# foresee, so a short, fixed pause.
RETRY_AFTER_SECONDS = 5


class Place(AbstractContextManager["Place"]):
    """One held request's place, released once however often `release` is called (a stream's
    close and its generator both call it)."""

    def __init__(self, places: HeldRequests) -> None:
        self._places: HeldRequests | None = places
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            places, self._places = self._places, None
        if places is not None:
            places.release()

    def __exit__(self, *_exception: object) -> None:
        self.release()


class HeldRequests(threading.BoundedSemaphore):
    """MAX_HELD_REQUESTS places, each taken at once or not at all."""

    def try_take(self) -> Place | None:
        """Takes a place if one is free; None when all are taken."""
        return Place(self) if self.acquire(blocking=False) else None


def try_hold() -> Place | None:
    """Takes a place for the current request, or None when this process holds its maximum."""
    places: HeldRequests = current_app.extensions["voicechat.held"]
    return places.try_take()


def hold() -> Place:
    """Takes a place for the current request; ServerBusy (503) when every place is taken."""
    place = try_hold()
    if place is None:
        raise ServerBusy(
            "Every place for a held request (an event stream, or a request waiting for its job) "
            f"is taken; retry in {RETRY_AFTER_SECONDS} s.",
            retry_after=RETRY_AFTER_SECONDS,
        )
    return place
