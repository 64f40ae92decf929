"""The test stores themselves: each test gets a database and a Redis prefix of its own."""

import asyncpg
from redis.asyncio import Redis


async def test_database_is_fresh_and_writable(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("INSERT INTO t VALUES (1)")
        assert await conn.fetchval("SELECT sum(x) FROM t") == 1
    finally:
        await conn.close()


async def test_redis_answers(redis_url: str, redis_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}k", "v")
        assert await client.get(f"{redis_prefix}k") == b"v"
    finally:
        await client.aclose()
