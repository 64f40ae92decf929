"""The shared Redis client waits for a free connection instead of failing under load."""

import asyncio

from cic_common.redis import create_redis


async def test_more_calls_than_connections_all_succeed(redis_url: str, redis_prefix: str) -> None:
    client = create_redis(redis_url, max_connections=4)
    try:
        results = await asyncio.gather(*(client.incr(f"{redis_prefix}n") for _ in range(300)))
        assert sorted(results) == list(range(1, 301))
        assert client.connection_pool.max_connections == 4
    finally:
        await client.aclose()
