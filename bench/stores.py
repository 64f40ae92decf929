"""Postgres and Redis for the benchmarks, found as the tests find them: ``CIC_TEST_DATABASE_URL``
(a server on which a fresh database is made for the run and dropped after) and
``CIC_TEST_REDIS_URL``, else embedded servers in a folder of the run."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cic_devstack.stack import Ports, StackConfig
from cic_devstack.stores import embedded_postgres, embedded_redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def stores(folder: Path) -> Iterator[tuple[str, str]]:
    """(Postgres server URL, Redis URL): the tests' servers, else embedded ones in ``folder``."""
    with contextlib.ExitStack() as stack:
        pg = os.environ.get("CIC_TEST_DATABASE_URL") or stack.enter_context(
            embedded_postgres(folder / "pg")
        )
        redis = os.environ.get("CIC_TEST_REDIS_URL") or stack.enter_context(
            embedded_redis(folder / "redis")
        )
        yield pg, redis


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A database of the run's own on ``server_url``, dropped afterwards."""
    name = f"cic_bench_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def stack_config(
    database_url: str,
    redis_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    **fields: Any,
) -> StackConfig:
    """The platform as a benchmark runs it: free ports, JSON logs at WARNING in ``log_dir``, this
    interpreter's console scripts; ``env`` adds settings, ``fields`` override StackConfig's."""
    bin_dir = Path(sys.executable).parent
    base_env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "HOME": str(log_dir)}
    settings: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "admin_token": secrets.token_urlsafe(32),
        "bin_dir": bin_dir,
        "ports": Ports(*(free_port() for _ in range(8))),
        "log_dir": log_dir,
        "log_format": "json",
        "log_level": "WARNING",
        "base_env": {**base_env, **(env or {})},
        **fields,
    }
    return StackConfig(**settings)
