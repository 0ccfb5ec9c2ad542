"""The launcher on real processes: the embedded Redis's log, the data folder's lock, signals
during start-up, a killed launcher's children, a stop that lets the running job finish."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import redis

from scripts.launch import REDIS_LOG, start_embedded_redis


def test_the_embedded_redis_logs_to_a_file_and_never_blocks_on_its_log(tmp_path: Path) -> None:
    server = start_embedded_redis(tmp_path / "redis")
    try:
        pid = server._process.pid
        for fd in (1, 2):
            mode = Path(f"/proc/{pid}/fd/{fd}").stat().st_mode
            assert not stat.S_ISFIFO(mode), f"fd {fd} of the server is a pipe"
        client = redis.Redis(port=server.port, socket_timeout=10)
        assert client.config_get("logfile")["logfile"] == REDIS_LOG
        client.config_set("loglevel", "verbose")  # a line per connection opened and closed
        log = tmp_path / "redis" / REDIS_LOG
        while log.stat().st_size < 256 * 1024:  # four times a pipe's buffer
            for _ in range(200):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10):
                    pass
            assert client.ping()  # a blocked server times out here
    finally:
        server.stop()
