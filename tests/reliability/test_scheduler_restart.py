"""The scheduler killed and started again under load: streams already on a node finish, requests
meanwhile get OpenAI's 503, picks resume once it is back, and no node is left looking busy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import openai
import pytest

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
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
        "reliability/scheduler_restart",
        node_args=("--itl-ms", "25"),
    ) as running:
        yield running


async def _key(stack: Stack) -> str:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant("Restart", "restart@example.com")
        return str((await admin.create_key(tenant["id"], "k"))["key"])


async def _stream(client: openai.AsyncOpenAI) -> int:
    """The completion tokens of one streamed chat, as the usage chunk reports them."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=STREAM_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    return usage[0].completion_tokens


async def _in_flight(stack: Stack) -> dict[str, int]:
    async with grpc.aio.insecure_channel(stack.addr("scheduler")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        reply = await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5)
    return {node.id: node.in_flight for node in reply.nodes}


async def test_a_scheduler_killed_under_load_comes_back_with_exact_in_flight_counts(
    stack: Stack,
) -> None:
    client = openai.AsyncOpenAI(
        api_key=await _key(stack), base_url=f"{stack.gateway_url}/v1", max_retries=0
    )
    try:
        assert await _stream(client) == STREAM_TOKENS  # the Route stream is open and working
        streams = [asyncio.create_task(_stream(client)) for _ in range(6)]
        await asyncio.sleep(0.5)  # every stream is on its node now
        assert sum((await _in_flight(stack)).values()) == 6

        stack.processes["scheduler"].kill()
        await stack.processes["scheduler"].stop()
        # No scheduler: a new request cannot be placed and says so in OpenAI's shape.
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert refused.value.status_code == 503

        # The streams already on their nodes never needed the scheduler: they finish whole.
        assert await asyncio.gather(*streams) == [STREAM_TOKENS] * 6

        await stack.start_service("scheduler")
        deadline = time.monotonic() + 15
        while True:  # picks resume (single calls at once, then a new Route stream)
            try:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "picks did not resume after the restart"
                await asyncio.sleep(0.2)
        assert await asyncio.gather(*(_stream(client) for _ in range(4))) == [STREAM_TOKENS] * 4
    finally:
        await client.close()

    # The six leases taken before the kill were released while the scheduler was away: the
    # gateway kept those releases and delivered them once it was back.
    deadline = time.monotonic() + 15
    while (counts := await _in_flight(stack)) and any(counts.values()):
        assert time.monotonic() < deadline, f"nodes still look busy: {counts}"
        await asyncio.sleep(0.2)
    assert set(counts) == set(stack.node_ids)
