"""The service's public HTTP API as the command line uses it: jobs, their events, their audio."""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests

from cli.sse import Event, events_of, lines_of

_LOGGER = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0
# The longest read of a plain request (a submit may carry a 25 MB upload).
READ_SECONDS = 60.0
# The event stream sends a keep-alive after 8-10 s of quiet: a longer silence is a lost link.
EVENTS_READ_SECONDS = 30.0
# Reconnections of an event stream in a row that brought no event before giving up.
EVENTS_RECONNECTS = 3


class ServiceError(Exception):
    """A request did not get the answer it asked for; the message says why, for a person."""


class Unreachable(ServiceError):
    """No answer at all: nothing listens at the URL, the connection broke or timed out."""


class WaitTimedOut(ServiceError):
    """The job did not finish within the time the caller was willing to wait."""


class Refused(ServiceError):
    """The service answered an error (problem+json, OpenAI's error, or status and text from a
    proxy); the message tells its status, `code`, `detail` and `Retry-After`."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        code, detail = "", ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
            code = str(inner.get("code") or "")
            detail = str(inner.get("detail") or inner.get("message") or inner.get("title") or "")
        if not detail:
            detail = response.reason or "error"
            text = response.text.strip().splitlines()
            if text and body is None:
                detail += f": {text[0][:200]}"
        message = (
            f"HTTP {self.status} {code}: {detail}" if code else f"HTTP {self.status}: {detail}"
        )
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            message += f" (try again in {retry_after} s)"
        elif self.busy:
            message += " (try again later)"
        super().__init__(message)

    @property
    def busy(self) -> bool:
        """Whether it is worth trying again later: rate limits, quotas, a full queue."""
        return self.status in (429, 503)


def _unreachable(url: str, error: requests.RequestException) -> Unreachable:
    """Says in words why `url` gave no answer (never the headers: the key is in them)."""
    if isinstance(error, requests.ConnectTimeout):
        why = f"no connection within {CONNECT_SECONDS:g} s"
    elif isinstance(error, requests.Timeout):
        why = "it stopped answering"
    elif "Connection refused" in str(error):  # requests' message quotes urllib3's and the socket's
        return Unreachable(
            f"cannot connect to {url}: connection refused. Is the service running? "
            "(`scripts/serve.sh` starts it; --url or VOICECHAT_URL names another.)"
        )
    else:
        why = f"the connection failed ({type(error).__name__})"
    return Unreachable(f"cannot reach {url}: {why}")


class Service:
    """One service at `url`; `api_key` is sent as a Bearer token (None: the service runs open)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "voicechat-cli"
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def request(
        self, method: str, path: str, *, read_seconds: float = READ_SECONDS, **options: Any
    ) -> requests.Response:
        """Sends one request; raises Unreachable with no answer, Refused on an error."""
        try:
            response = self.http.request(
                method, self.url + path, timeout=(CONNECT_SECONDS, read_seconds), **options
            )
        except requests.RequestException as error:
            raise _unreachable(self.url, error) from None
        if response.status_code >= 400:
            raise Refused(response)
        return response

    def create_conversation(self) -> str:
        """Starts a conversation; returns its id."""
        return str(self.request("POST", "/v1/conversations").json()["id"])

    def submit(self, text: str | None, audio: Path | None, options: dict[str, str]) -> Any:
        """Submits a prompt as text or as a recording (part `audio`), `options` as form values."""
        if audio is None:
            return self.request("POST", "/v1/jobs", json={"text": text, **options}).json()
        media_type = mimetypes.guess_type(audio.name)[0] or "application/octet-stream"
        with audio.open("rb") as recording:
            files = {"audio": (audio.name, recording, media_type)}
            return self.request("POST", "/v1/jobs", data=options, files=files).json()

    def job(self, job_id: str) -> Any:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str, read_seconds: float = READ_SECONDS) -> Any:
        """Cancels a job; returns it (still `running` while its worker stops it)."""
        return self.request("POST", f"/v1/jobs/{job_id}/cancel", read_seconds=read_seconds).json()

    def events(self, job_id: str, deadline: float) -> Iterator[Event]:
        """The job's events up to `done`, resuming a broken stream a few times (`Last-Event-ID`);
        WaitTimedOut past `deadline` (a `time.monotonic()`)."""
        last_id, failures = "0", 0
        while True:
            read_seconds = min(EVENTS_READ_SECONDS, max(1.0, deadline - time.monotonic()))
            headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id}
            path = f"/v1/jobs/{job_id}/events"
            response = self.request(
                "GET", path, headers=headers, stream=True, read_seconds=read_seconds
            )
            if response.status_code == 204:  # resumed after `done`: nothing more will come
                return
            try:
                with response:
                    for event in events_of(lines_of(response.iter_content(chunk_size=None))):
                        failures = 0
                        last_id = event.id or last_id
                        yield event
                        if event.type == "done":
                            return
                        if time.monotonic() > deadline:
                            break
            except requests.RequestException as error:
                _LOGGER.debug("event stream broke job_id=%s error=%s", job_id, error)
            if time.monotonic() > deadline:
                raise WaitTimedOut(f"job {job_id} did not finish in time")
            failures += 1
            if failures > EVENTS_RECONNECTS:
                raise Unreachable(f"the event stream of job {job_id} kept breaking")

    def download_audio(self, job_id: str, into: BinaryIO, read_seconds: float) -> None:
        """Writes the spoken reply to `into` as it streams."""
        path = f"/v1/jobs/{job_id}/audio"
        with self.request("GET", path, stream=True, read_seconds=read_seconds) as response:
            try:
                for chunk in response.iter_content(chunk_size=None):
                    into.write(chunk)
                    into.flush()
            except requests.RequestException as error:
                raise _unreachable(self.url, error) from None
