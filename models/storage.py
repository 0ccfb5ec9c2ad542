"""A job's files under server-made names, in a local directory (one host) or the database.

A reply is named by its attempt, so an attempt that lost its lease never overwrites the file the
row points at (the row names it only through the lease holder's fenced `succeed`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import ColumnElement, and_, delete, select
from sqlalchemy.orm import Session, sessionmaker

from models.errors import InsufficientStorage
from models.settings import Settings
from models.tables import ReplyFormat, StoredFile

# Partial writes: LocalStore's temporary files before their rename, DatabaseStore's copies.
_PARTIAL_PREFIX = ".tmp-"
# How many names one query of the database store reads while listing.
_LISTING_PAGE = 500

# A full disk, a quota, or a file over the process's size limit (RLIMIT_FSIZE): the write fails
# for want of room, not because of the request, and is reported as such (issue 11).
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

UPLOADS = "uploads"
RESULTS = "results"


def upload_name(job_id: str, extension: str = "wav") -> str:
    """The stored name of a job's uploaded recording, with its container's extension."""
    if not extension.isalnum():
        raise ValueError("extensions are alphanumeric")
    return f"{_checked(job_id)}.{extension}"


def reply_name(job_id: str, attempt: int) -> str:
    """The stored name of the spoken reply one attempt of a job made."""
    return f"{_checked(job_id)}-{int(attempt)}.wav"


def sentence_name(job_id: str, attempt: int, index: int) -> str:
    """One spoken sentence of an attempt's reply (16-bit mono PCM), streamed while the job runs."""
    return f"{_checked(job_id)}-{int(attempt)}-s{int(index)}.pcm"


def job_id_of(name: str) -> str | None:
    """The job a stored name belongs to, or None when the name is none of the server's."""
    job_id = name.split(".", 1)[0].split("-", 1)[0]
    return job_id if job_id.isalnum() else None


def _checked(job_id: str) -> str:
    if not job_id.isalnum():
        raise ValueError("job ids are alphanumeric")
    return job_id


def _safe(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a stored file name: {name!r}")
    return name


class LocalStore:
    """A directory of files, for a single host (the default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        """A stored file's path, refusing names that would leave the store."""
        return self.root / _safe(name)

    def write(self, name: str, data: bytes) -> str:
        """Writes a synced temporary file renamed over `name`: a reader never sees half a file."""
        final = self.path(name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=_PARTIAL_PREFIX, suffix=final.suffix)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                # mkstemp makes 0600 files; the API may run as another user than the worker.
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as error:
            if error.errno in _NO_ROOM:
                raise InsufficientStorage(f"No room left to store {name}.") from error
            raise
        return final.name

    def read(self, name: str) -> bytes:
        """A stored file's bytes (FileNotFoundError when there is none)."""
        return self.path(name).read_bytes()

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def local_path(self, name: str) -> Path | None:
        """The file's path when the store is a local directory (to send it as it is), else None."""
        return self.path(name)

    @contextlib.contextmanager
    def as_file(self, name: str) -> Iterator[Path]:
        """A path holding the stored file while the context lasts (a copy if it is not local)."""
        yield self.path(name)

    def names_before(self, cutoff: datetime) -> Iterator[str]:
        """The names of the files stored before `cutoff`, lazily, in no set order."""
        for entry in _entries_before(self.root, cutoff):
            if not entry.name.startswith("."):
                yield entry.name

    def sweep_partial(self, cutoff: datetime) -> int:
        """Removes what writes and copies a crash left behind before `cutoff`; returns how many."""
        return _sweep_partial(self.root, cutoff)


def _sweep_partial(folder: Path, cutoff: datetime) -> int:
    """Removes the temporary files of `folder` last modified before `cutoff`."""
    swept = 0
    for entry in _entries_before(folder, cutoff):
        if entry.name.startswith(_PARTIAL_PREFIX):
            Path(entry.path).unlink(missing_ok=True)
            swept += 1
    return swept


def _entries_before(folder: Path, cutoff: datetime) -> Iterator[os.DirEntry[str]]:
    """The regular files of `folder` last modified before `cutoff` (none if it is missing)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    limit = cutoff.timestamp()
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile, by another sweep
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                yield entry


class DatabaseStore:
    """Files as rows of `stored_files`: every host that reaches the database reaches them."""

    def __init__(self, sessions: sessionmaker[Session], area: str, scratch: Path) -> None:
        self.sessions = sessions
        self.area = area
        self.scratch = scratch  # where `as_file` puts its copies

    def _is(self, name: str) -> ColumnElement[bool]:
        return and_(StoredFile.area == self.area, StoredFile.name == _safe(name))

    def write(self, name: str, data: bytes) -> str:
        with self.sessions() as session:
            session.merge(StoredFile(area=self.area, name=_safe(name), data=data))
            session.commit()
        return name

    def read(self, name: str) -> bytes:
        with self.sessions() as session:
            data = session.scalar(select(StoredFile.data).where(self._is(name)))
        if data is None:
            raise FileNotFoundError(f"{self.area}/{name}")
        return bytes(data)

    def exists(self, name: str) -> bool:
        with self.sessions() as session:
            return session.scalar(select(StoredFile.name).where(self._is(name))) is not None

    def delete(self, name: str) -> None:
        with self.sessions() as session:
            session.execute(delete(StoredFile).where(self._is(name)))
            session.commit()

    def local_path(self, name: str) -> Path | None:
        return None

    @contextlib.contextmanager
    def as_file(self, name: str) -> Iterator[Path]:
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=self.scratch, prefix=_PARTIAL_PREFIX, suffix=Path(_safe(name)).suffix
        ) as copy:
            copy.write(self.read(name))
            copy.flush()
            yield Path(copy.name)

    def names_before(self, cutoff: datetime) -> Iterator[str]:
        after = ""  # keyset pages by name: each query reads one page, however many are stored
        while True:
            with self.sessions() as session:
                page = list(
                    session.scalars(
                        select(StoredFile.name)
                        .where(
                            StoredFile.area == self.area,
                            StoredFile.name > after,
                            StoredFile.created_at < cutoff,
                        )
                        .order_by(StoredFile.name)
                        .limit(_LISTING_PAGE)
                    )
                )
            yield from page
            if len(page) < _LISTING_PAGE:
                return
            after = page[-1]

    def sweep_partial(self, cutoff: datetime) -> int:
        # A row is written whole or not at all; only the copies `as_file` made can be left over.
        return _sweep_partial(self.scratch, cutoff)


# Where one kind of file (uploads, or replies) is kept.
Store = LocalStore | DatabaseStore


class JobFiles(Protocol):
    """What names a job's files: its row, or the columns of it below."""

    id: str
    attempts: int
    input_audio_file: str | None
    reply_format: str


def delete_job_files(job: JobFiles, uploads: Store, results: Store) -> None:
    """Deletes a job's recording and each attempt's reply and sentences (a killed one's too)."""
    if job.input_audio_file:
        uploads.delete(job.input_audio_file)
    if job.reply_format != ReplyFormat.VOICE.value:
        return  # a text reply's job never stored a result file
    for attempt in range(1, max(job.attempts, 1) + 1):
        results.delete(reply_name(job.id, attempt))
        index = 0  # an attempt's sentences are numbered from 0 without a gap
        while results.exists(name := sentence_name(job.id, attempt, index)):
            results.delete(name)
            index += 1


def open_store(settings: Settings, area: str, sessions: sessionmaker[Session]) -> Store:
    """The store of `area` (`UPLOADS` or `RESULTS`), as `STORAGE_BACKEND` chooses."""
    if settings.storage_backend == "database":
        return DatabaseStore(sessions, area, scratch=settings.data_dir / "tmp")
    return LocalStore(settings.data_dir / area)
