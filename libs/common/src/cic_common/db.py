"""Postgres: a pool per service, each service in its own schema, with forward-only migrations.

Migrations are ``NNNN_name.sql`` files shipped inside the service's package. They are applied in
order, each in its own transaction, under an advisory lock so replicas starting together do not
race; applied versions are kept in ``<schema>.schema_migrations``. A migration is never edited
once released: changes go in a new file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from importlib.abc import Traversable
from importlib.resources import files

import asyncpg

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"cic-migrations:{schema}".encode()).digest()[:8], "big", signed=True
    )


def migration_files(package: str) -> list[tuple[int, str, Traversable]]:
    """The migrations in ``package`` (a package holding ``NNNN_name.sql`` files), in order."""
    found = []
    for entry in files(package).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {package}")
    return found


async def migrate(conn: asyncpg.Connection, schema: str, package: str) -> list[str]:
    """Applies the migrations of ``package`` not yet applied in ``schema``; returns their names."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')  # noqa: S608 (schema checked above)
        }
        for version, name, entry in migration_files(package):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                await conn.execute(entry.read_text(encoding="utf-8"))
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)',  # noqa: S608
                    version,
                    name,
                )
            log.info("applied migration %s to schema %s", name, schema)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied


async def open_pool(
    url: str,
    schema: str,
    migrations_package: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
) -> asyncpg.Pool:
    """Migrates ``schema`` (when a package is given) and returns a pool whose connections use it."""
    if migrations_package is not None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await migrate(conn, schema, migrations_package)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=10,
        command_timeout=30,
        server_settings={"search_path": schema, "application_name": f"cic-{schema}"},
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 5.0) -> None:
    """Closes the pool, waiting at most ``timeout_s`` for busy connections to come back, then
    terminating them (``Pool.close`` alone waits for ever on a connection that is never
    released, and a service must stop within its grace period)."""
    try:
        async with asyncio.timeout(timeout_s):
            await pool.close()
    except TimeoutError:
        log.warning("Postgres connections still busy after %ss; closing them", timeout_s)
        pool.terminate()
