"""Redis and Postgres restarted under a running platform: every service recovers without a
restart of its own, and what was sent meanwhile is accounted for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import asyncpg
import openai
import pytest

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
from tests.support.platform import running_platform
from tests.support.restartable import RestartablePostgres, RestartableRedis

MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Hello there."}]
T = TypeVar("T")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    server = RestartablePostgres(tmp_path / "pg")
    server.start()
    yield server
    server.stop()


async def _eventually(action: Callable[[], Awaitable[T]], within_s: float, what: str) -> T:
    """``action``'s result once it stops raising; fails after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await action()
        except Exception as err:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within_s} s: {err!r}") from err
            await asyncio.sleep(0.2)


async def _admin(stack: Stack) -> tuple[aiohttp.ClientSession, AdminClient]:
    session = aiohttp.ClientSession()
    return session, AdminClient(session, stack.gateway_url, stack.config.admin_token)


async def _ready_nodes(admin: AdminClient, expected: set[str]) -> None:
    """Every node of ``expected`` is ready, and there is no other."""
    nodes = await admin.list_nodes()
    ready = {n["id"] for n in nodes if n["state"] == "ready"}
    assert ready == expected and len(nodes) == len(expected), nodes


async def test_redis_restarted_under_the_platform(
    database_url: str, own_redis: RestartableRedis
) -> None:
    env = {"HEARTBEAT_INTERVAL_S": "1"}  # nodes re-register promptly with the emptied registry
    async with running_platform(
        database_url, own_redis.url, "cic:", "reliability/redis_restart", env=env
    ) as stack:
        gateway_pid = stack.processes["gateway"].proc.pid  # type: ignore[union-attr]
        session, admin = await _admin(stack)
        async with session:
            tenant = await admin.create_tenant("Cache", "cache@example.com")
            key = (await admin.create_key(tenant["id"], "k"))["key"]
        client = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)

        async def chat() -> int:
            done = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=3
            )
            assert done.usage is not None
            return done.usage.completion_tokens

        try:
            assert await chat() == 3
            own_redis.stop()
            # The registry is in Redis: nothing can be placed, and the client is told so.
            with pytest.raises(openai.APIStatusError) as refused:
                await chat()
            assert refused.value.status_code == 503
            own_redis.start()  # back, and empty
            assert await _eventually(chat, 20, "chat after the Redis restart") == 3
            assert await asyncio.gather(*(chat() for _ in range(10))) == [3] * 10
        finally:
            await client.close()
        assert stack.processes["gateway"].proc.pid == gateway_pid  # type: ignore[union-attr]
        assert stack.processes["gateway"].running


async def test_postgres_restarted_under_the_platform(
    redis_url: str, redis_prefix: str, own_postgres: RestartablePostgres
) -> None:
    async with running_platform(
        own_postgres.url, redis_url, redis_prefix, "reliability/postgres_restart"
    ) as stack:
        session, admin = await _admin(stack)
        async with session:
            tenant = await admin.create_tenant("Ledger", "ledger@example.com")
            key = (await admin.create_key(tenant["id"], "k"))["key"]
            client = openai.AsyncOpenAI(
                api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0
            )
            try:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
                nodes_before = {n["id"] for n in await admin.list_nodes()}
                own_postgres.stop()
                # Past two of the orchestrator's leader polls (2 s): it has lost its lock
                # connection, and its nodes must go on serving all the same.
                await asyncio.sleep(5)
                # A known key is served from the gateway's cache: requests go on meanwhile.
                for _ in range(5):
                    await client.chat.completions.create(
                        model=MODEL, messages=MESSAGES, max_tokens=3
                    )
                await asyncio.sleep(1)
                own_postgres.start()
                # Every service reconnects by itself: a new key works (written, then looked up).
                fresh = await _eventually(
                    lambda: admin.create_key(tenant["id"], "after"), 20, "a key after the restart"
                )
                other = openai.AsyncOpenAI(
                    api_key=fresh["key"], base_url=f"{stack.gateway_url}/v1", max_retries=0
                )
                async with other:
                    await _eventually(
                        lambda: other.chat.completions.create(
                            model=MODEL, messages=MESSAGES, max_tokens=3
                        ),
                        20,
                        "a chat with the new key",
                    )
                # The orchestrator led on with the same node: nothing was ended or replaced.
                await _eventually(
                    lambda: _ready_nodes(admin, nodes_before), 20, "the same node ready again"
                )
            finally:
                await client.close()

        # Usage made while Postgres was down reached the ledger once it was back: 7 requests.
        conn = await asyncpg.connect(own_postgres.url)
        try:

            async def seven() -> int:
                count = await conn.fetchval(
                    "SELECT count(DISTINCT request_id) FROM billing.usage_events"
                    " WHERE tenant_id = $1",
                    tenant["id"],
                )
                assert count == 7, count
                return int(count)

            assert await _eventually(seven, 30, "usage in the ledger") == 7
            rows = await conn.fetchval(
                "SELECT count(*) FROM billing.usage_events WHERE tenant_id = $1", tenant["id"]
            )
            assert rows == 7
        finally:
            await conn.close()
