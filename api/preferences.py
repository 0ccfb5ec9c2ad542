"""RFC 7240's `Prefer` header of `POST /v1/jobs`: its `wait=N` read, and its exact pattern."""

from __future__ import annotations

from flask import request

from api.openapi.declare import header
from api.schemas import BLANK
from models.errors import InvalidHeader
from models.settings import Settings


def wait_preference(value: str) -> int | None:
    """The seconds of the first `wait` preference in a `Prefer` value (Replicate's convention),
    or None without one; other preferences are ignored, as RFC 7240 asks."""
    for preference in value.split(","):
        name, _, seconds = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        seconds = seconds.strip().strip('"')
        if not (seconds.isascii() and seconds.isdigit()) or len(seconds) > 6:
            raise InvalidHeader("Prefer: wait must be a whole number of seconds, e.g. wait=30.")
        return int(seconds)
    return None


def preferred_wait(settings: Settings) -> int | None:
    """The request's `Prefer: wait=N`, capped at MAX_WAIT_SECONDS; see `wait_preference`."""
    seconds = wait_preference(request.headers.get("Prefer", ""))
    return None if seconds is None else min(seconds, settings.max_wait_seconds)


# `wait_preference`'s language as a JSON Schema pattern, so that the document refuses exactly
# the headers the service does (issue 20): preferences up to the first whose name, trimmed, is
# `wait` (in any case), then that one with a good value, then anything. Without lookahead, which
# not every pattern dialect has, "a name other than wait" is spelled out by its length.
_SPACE = f"[{BLANK}]"
_NAME_CHAR = "[^,;=]"  # a name ends at the first `;` or `=`
_SOLID = f"[^,;={BLANK}]"  # a name's first and last characters, once trimmed
_NOT_WAIT = "|".join(
    (
        f"{_SOLID}",
        f"{_SOLID}{_NAME_CHAR}?{_SOLID}",
        f"{_SOLID}{_NAME_CHAR}{{3,}}{_SOLID}",
        f"[^wW,;={BLANK}]{_NAME_CHAR}{{2}}{_SOLID}",
        f"[wW][^aA,;=]{_NAME_CHAR}{_SOLID}",
        f"[wW][aA][^iI,;=]{_SOLID}",
        f"[wW][aA][iI][^tT,;={BLANK}]",
    )
)
_OTHER = f"{_SPACE}*(?:{_NOT_WAIT})?{_SPACE}*(?:[;=][^,]*)?"
_WAIT = f'{_SPACE}*[wW][aA][iI][tT]{_SPACE}*={_SPACE}*"*[0-9]{{1,6}}"*{_SPACE}*(?:;[^,]*)?'
PREFER_PATTERN = f"^(?:{_OTHER},)*(?:{_OTHER}|{_WAIT}(?:,[\\s\\S]*)?)$"

PREFER = header(
    "Prefer",
    "RFC 7240 preferences; only `wait=N` is read, N a whole number of seconds (at most six "
    "digits, optionally quoted), capped at MAX_WAIT_SECONDS ({max_wait_seconds} here). Other "
    "preferences are ignored; a malformed `wait` (the first, if several) is 400 "
    "`invalid_header`.",
    {"type": "string", "pattern": PREFER_PATTERN, "examples": ["wait=30"]},
)
