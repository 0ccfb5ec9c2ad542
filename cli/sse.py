"""Server-Sent Events read from a byte stream, as the HTML standard's parser reads them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# The type given to a comment line (the service's keep-alive after a quiet spell).
QUIET = ""


@dataclass(frozen=True)
class Event:
    """One event: its `event:` name, its `data:` parsed as JSON, and its `id:` if any."""

    type: str
    data: Any
    id: str | None = None


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """Splits a stream of byte chunks into lines (LF or CRLF) as they complete; not requests'
    `iter_lines`, which reads a CRLF split across two chunks as two line ends."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def events_of(lines: Iterable[str]) -> Iterator[Event]:
    """Parses SSE lines into events (ValueError on data not JSON); each comment yields a `QUIET`
    event, so a reader regains control at every keep-alive."""
    kind, data, event_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield Event(kind, json.loads("\n".join(data)), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            yield Event(QUIET, None)
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
