"""A job's files (uploaded recordings, spoken replies) under server-made names, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class FileStore:
    """A directory of files named by the server, never by the client.

    Names are `{job_id}.wav`; the job id is a hex string the server made, so no client text
    ever reaches a path.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def name_for(job_id: str) -> str:
        """Returns the file name stored on a job's row for its file in this store."""
        if not job_id.isalnum():
            raise ValueError("job ids are alphanumeric")
        return f"{job_id}.wav"

    def path(self, name: str) -> Path:
        """Returns the path of a stored file, refusing names that would leave the store."""
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"not a stored file name: {name!r}")
        return self.root / name

    def write(self, job_id: str, data: bytes) -> str:
        """Writes `data` for a job atomically and returns the stored name.

        The bytes go to a temporary file in the same directory, are flushed to disk and then
        renamed over the final name, so a reader never sees half a file.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        name = self.name_for(job_id)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".wav")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return name

    def exists(self, name: str) -> bool:
        """Whether the stored file is there."""
        return self.path(name).is_file()
