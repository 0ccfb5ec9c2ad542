"""Both file stores behind one interface: the local directory and the database (SQLite and, with
TEST_DATABASE_URL, PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from models import storage
from models.db import make_engine, make_session_factory
from tests.conftest import ROOT, make_settings


@pytest.fixture(params=["local", "database"])
def store(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[storage.Store]:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes.update(database_url=database_url, configure_logger=False)
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    settings = make_settings(tmp_path, STORAGE_BACKEND=request.param, DATABASE_URL=database_url)
    yield storage.open_store(settings, storage.RESULTS, make_session_factory(engine))
    engine.dispose()


def test_files_are_written_read_and_deleted(store: storage.Store) -> None:
    name = storage.reply_name("abc123", 2)
    assert name == "abc123-2.wav"
    assert not store.exists(name)
    with pytest.raises(FileNotFoundError):
        store.read(name)
    assert store.write(name, b"RIFF one") == name
    store.write(name, b"RIFF two")  # written again whole, never appended
    assert store.exists(name) and store.read(name) == b"RIFF two"
    with store.as_file(name) as path:
        assert path.read_bytes() == b"RIFF two"
    store.delete(name)
    store.delete(name)
    assert not store.exists(name)


def test_attempts_never_share_a_name(store: storage.Store) -> None:
    store.write(storage.reply_name("abc", 1), b"first")
    store.write(storage.reply_name("abc", 2), b"second")
    assert store.read(storage.reply_name("abc", 1)) == b"first"


@pytest.mark.parametrize("name", ["../x.wav", "a/b.wav", ".hidden", ""])
def test_names_that_would_leave_the_store_are_refused(store: storage.Store, name: str) -> None:
    with pytest.raises(ValueError):
        store.write(name, b"x")
    with pytest.raises(ValueError):
        storage.upload_name("../job")


def test_where_each_backend_keeps_its_files(store: storage.Store, tmp_path: Path) -> None:
    store.write("j1-1.wav", b"data")
    path = store.local_path("j1-1.wav")
    if isinstance(store, storage.LocalStore):
        assert path == tmp_path / "results" / "j1-1.wav"
        # Readable by the API when it runs as another user than the worker.
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    else:
        assert path is None and not (tmp_path / "results").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to switch uid")
def test_a_file_the_worker_wrote_as_root_is_read_by_the_api_as_uid_1000() -> None:
    # The Jetson compose: the worker image runs as root, the API image as uid 1000 (Dockerfile).
    folder = Path(tempfile.mkdtemp(prefix="voicechat-uid-"))
    try:
        folder.chmod(0o755)  # mkdtemp's 0700 would stop uid 1000 before the store's own modes
        store = storage.LocalStore(folder / "results")
        store.write("j1-1.wav", b"RIFF reply")
        read = ["cat", str(folder / "results" / "j1-1.wav")]
        done = subprocess.run(read, check=False, user=1000, group=1000, capture_output=True)
        assert done.returncode == 0 and done.stdout == b"RIFF reply", done.stderr
    finally:
        shutil.rmtree(folder)
