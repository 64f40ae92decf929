"""A gateway replica sent SIGTERM under load: its streams in flight finish whole, new requests
go to the other replica, it exits 0, and the ledger holds every request once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import openai
import pytest

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
from tests.support.balancer import Balancer
from tests.support.net import free_port
from tests.support.platform import running_platform

MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Say something long."}]
STREAM_TOKENS = 60  # at 25 ms a token: a stream lasts about 1.5 s


@pytest.fixture
async def stack(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Stack]:
    async with running_platform(
        database_url,
        redis_url,
        redis_prefix,
        "reliability/gateway_sigterm",
        node_args=("--itl-ms", "25"),
        env={"SHUTDOWN_GRACE_S": "20"},
    ) as running:
        yield running


async def _stream(client: openai.AsyncOpenAI, flowing: asyncio.Queue[None]) -> int:
    """The completion tokens of one stream; puts to ``flowing`` once its first chunk is in."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=STREAM_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = []
    async for chunk in stream:
        if not usage and chunk.choices:
            flowing.put_nowait(None)
        if chunk.usage is not None:
            usage.append(chunk.usage)
    return usage[0].completion_tokens


async def _chat_through(session: aiohttp.ClientSession, url: str, key: str) -> int:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3}
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_a_gateway_stopped_under_load_finishes_its_streams_and_loses_nothing(
    stack: Stack, database_url: str
) -> None:
    port_b = free_port()
    await stack.start_gateway_replica("gateway-b", port_b, free_port())
    host = stack.config.host
    balancer = Balancer([(host, stack.config.ports.gateway), (host, port_b)])
    await balancer.start()
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant("Rolling", "rolling@example.com")
        key = (await admin.create_key(tenant["id"], "k"))["key"]

    # Straight to replica A: streams that are in flight there when it is told to stop.
    on_a = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)
    # New connections for every request, through the balancer, as clients behind a Service.
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:
        flowing: asyncio.Queue[None] = asyncio.Queue()
        streams = [asyncio.create_task(_stream(on_a, flowing)) for _ in range(5)]
        for _ in streams:  # every stream is under way on A
            await asyncio.wait_for(flowing.get(), 20)
        gateway_a = stack.processes["gateway"]
        stopped = asyncio.create_task(gateway_a.stop(grace=30))
        await asyncio.sleep(0.3)  # A has closed its listening socket by now
        to_a = balancer.connections[(host, stack.config.ports.gateway)]
        statuses = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or len(statuses) < 10:
            statuses.append(await _chat_through(fresh, balancer.url, key))
        assert statuses == [200] * len(statuses)
        # A stopping replica takes no new connection: every one went to B.
        assert balancer.connections[(host, stack.config.ports.gateway)] == to_a
        assert balancer.connections[(host, port_b)] == len(statuses)
        assert await asyncio.gather(*streams) == [STREAM_TOKENS] * 5
        assert await stopped == 0
    finally:
        await fresh.close()
        await on_a.close()
        await balancer.close()

    conn = await asyncpg.connect(database_url)
    try:
        expected = 5 + len(statuses)
        deadline = time.monotonic() + 20
        while True:
            rows = await conn.fetch(
                "SELECT request_id, completion_tokens FROM billing.usage_events"
                " WHERE tenant_id = $1",
                tenant["id"],
            )
            if len(rows) >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    assert len(rows) == expected and len({r["request_id"] for r in rows}) == expected
    assert sorted(r["completion_tokens"] for r in rows) == [3] * len(statuses) + [STREAM_TOKENS] * 5
