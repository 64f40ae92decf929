"""Forward-only migrations per service schema, applied once, in order, under a lock."""

import asyncio

import asyncpg
import pytest

from cic_common.db import close_pool, migrate, open_pool

PACKAGE = "tests.unit.common.fixture_migrations"


async def test_migrations_apply_once_in_order(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn, "svc", PACKAGE) == [
            "0001_create_things.sql",
            "0002_add_colour.sql",
        ]
        assert await migrate(conn, "svc", PACKAGE) == []
        versions = await conn.fetch("SELECT version FROM svc.schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [1, 2]
        await conn.execute("INSERT INTO svc.things (id, name, colour) VALUES (1, 'a', 'red')")
    finally:
        await conn.close()


async def test_concurrent_starts_do_not_race(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, "svc", PACKAGE) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]


async def test_pool_uses_the_service_schema(database_url: str) -> None:
    pool = await open_pool(database_url, "svc", PACKAGE)
    try:
        await pool.execute("INSERT INTO things (id, name) VALUES (1, 'x')")
        assert await pool.fetchval("SELECT name FROM svc.things WHERE id = 1") == "x"
    finally:
        await pool.close()


async def test_bad_schema_name_refused(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(ValueError):
            await migrate(conn, 'x"; DROP TABLE y; --', PACKAGE)
    finally:
        await conn.close()


async def test_closing_a_pool_does_not_wait_for_ever_on_a_connection_never_given_back(
    database_url: str,
) -> None:
    pool = await open_pool(database_url, "svc_close")
    await pool.acquire()  # by a task that never gives it back (stuck, or forgotten)
    await asyncio.wait_for(close_pool(pool, timeout_s=0.2), 10)
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):
        await pool.acquire()
