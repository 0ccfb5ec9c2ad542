"""Who is calling: the API key a request came with, which owns what it makes and alone sees it."""

from __future__ import annotations

from flask import g


def caller_id() -> str | None:
    """The id of the API key this request came with; None when the service runs open."""
    key_id: str | None = g.get("api_key_id")
    return key_id


def visible(owner_id: str | None) -> bool:
    """Whether the caller may see a row of key `owner_id` (open: of none); else it is unknown."""
    return owner_id == caller_id()


def release_connection() -> None:
    """Hands the request session's connection back to the pool (the session stays usable):
    a held request (a wait, a stream) reads the database in short sessions of its own."""
    session = g.get("db")  # made by the first `g.db`
    if session is not None and session.in_transaction():  # else it holds no connection
        session.close()
