"""Who is calling: the API key a request came with, the owner of everything it creates and the
only caller that may see it."""

from __future__ import annotations

from flask import g


def caller_id() -> str | None:
    """The id of the API key this request came with; None when the service runs open."""
    key_id: str | None = g.get("api_key_id")
    return key_id


def visible(owner_id: str | None) -> bool:
    """Whether the caller may see a row owned by key `owner_id`: only the key that made it, and
    in open mode only the rows made open (owner None). Anything else is answered as unknown."""
    return owner_id == caller_id()


def release_connection() -> None:
    """Ends the request's database session, handing its connection back to the pool; the
    session stays usable and checks out another if it is used again. Called before a request
    is held (a wait, a stream), which then reads the database in short sessions of its own."""
    session = g.get("db")
    if session is not None:
        session.close()
