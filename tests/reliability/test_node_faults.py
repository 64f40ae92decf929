"""A node killed mid-stream and a node that hangs, with real processes: what the clients saw,
what the ledger holds, and that the scheduler stops sending the broken node traffic."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import grpc
import openai
import psutil
import pytest

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
from tests.support.platform import running_platform

MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Say something long."}]
STREAM_TOKENS = 80  # at 25 ms a token: a stream lasts about 2 s
READ_TIMEOUT_S = 1.5


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, redis_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    async with running_platform(
        database_url,
        redis_url,
        redis_prefix,
        f"reliability/{request.node.name}",
        node_args=("--itl-ms", "25"),
        # The orchestrator would replace the killed node; this test follows the traffic on the
        # two nodes it started with (replacement has its own tests).
        env={"UPSTREAM_READ_TIMEOUT_S": str(READ_TIMEOUT_S), "REPLACE_LOST_NODES": "false"},
    ) as running:
        yield running


async def _tenant_key(stack: Stack) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant("Faults", "faults@example.com")
        return tenant["id"], str((await admin.create_key(tenant["id"], "k"))["key"])


async def _nodes(stack: Stack) -> dict[str, scheduler_pb2.Node]:
    async with grpc.aio.insecure_channel(stack.addr("scheduler")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        reply = await stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=5)
    return {node.id: node for node in reply.nodes}


def _node_process(endpoint: str) -> psutil.Process:
    """The simulator serving ``endpoint`` (started with ``--port <its port>``)."""
    port = str(urlsplit(endpoint).port)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "--port" in cmdline and cmdline[cmdline.index("--port") + 1 :][:1] == [port]:
            return proc
    raise AssertionError(f"no simulator serves {endpoint}")


async def _stream(client: openai.AsyncOpenAI) -> tuple[str, int | None]:
    """('ok', completion tokens) or ('error', None) when the SDK raised mid-stream."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=STREAM_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    try:
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    except openai.APIError:
        return "error", None
    return "ok", usage[0].completion_tokens


async def _ledger(database_url: str, tenant_id: str, rows: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            found = await conn.fetch(
                "SELECT node_id, completion_tokens, status_code FROM billing.usage_events"
                " WHERE tenant_id = $1 ORDER BY finished_at",
                tenant_id,
            )
            if len(found) >= rows or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_a_node_killed_mid_stream(stack: Stack, database_url: str) -> None:
    tenant_id, key = await _tenant_key(stack)
    client = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)
    try:
        streams = [asyncio.create_task(_stream(client)) for _ in range(6)]
        await asyncio.sleep(0.6)  # every stream has its node and some tokens by now
        nodes = await _nodes(stack)
        victim = max(nodes.values(), key=lambda n: (n.in_flight, n.id))
        survivor = next(n for n in nodes.values() if n.id != victim.id)
        on_victim = victim.in_flight
        assert on_victim > 0 and on_victim + survivor.in_flight == 6
        _node_process(victim.endpoint).send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        results = await asyncio.gather(*streams)
        # Each stream on the killed node ends with an error the SDK raises; the others are whole.
        assert sorted(results, key=str) == sorted(
            [("error", None)] * on_victim + [("ok", STREAM_TOKENS)] * (6 - on_victim), key=str
        )

        # Requests meanwhile are answered (a refused node is failed over before its first byte);
        # five seconds after the kill the dead node gets no traffic at all.
        chats = 0
        while time.monotonic() - killed_at < 5:
            chats += 1
            done = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=2
            )
            assert done.usage is not None and done.usage.completion_tokens == 2
        late = await asyncio.gather(*(_stream(client) for _ in range(6)))
        assert late == [("ok", STREAM_TOKENS)] * 6
    finally:
        await client.close()

    nodes = await _nodes(stack)
    # Out of rotation: its breaker open, or (when the orchestrator saw its process die first)
    # deregistered altogether.
    assert victim.id not in nodes or not nodes[victim.id].healthy
    # Every request reached a node: 6 streams at the kill, the chats meanwhile, 6 streams after.
    rows = await _ledger(database_url, tenant_id, rows=6 + chats + 6)
    assert len(rows) == 6 + chats + 6
    broken = [r for r in rows if r["node_id"] == victim.id and r["status_code"] != 200]
    # What the killed node produced before it died is billed: some tokens, not all.
    assert len(broken) == on_victim
    assert all(0 < r["completion_tokens"] < STREAM_TOKENS for r in broken)
    last_six = rows[-6:]
    assert {r["node_id"] for r in last_six} == {survivor.id}


async def test_a_node_that_hangs_times_out_with_504_and_its_breaker_opens(
    stack: Stack,
) -> None:
    _, key = await _tenant_key(stack)
    nodes = await _nodes(stack)
    hung = sorted(nodes.values(), key=lambda n: n.id)[0]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{hung.endpoint}/sim/config", json={"hang": True}) as resp:
            assert resp.status == 200

    client = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)

    async def one() -> int:
        started = time.monotonic()
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        except openai.APIStatusError as err:
            assert time.monotonic() - started < READ_TIMEOUT_S + 3, "not within the timeout"
            return err.status_code
        return 200

    statuses: list[int] = []
    try:
        # Requests at once, so that the hung node gets its share (one at a time, least-loaded
        # would steer clear of it after the first, by the requests waiting on it).
        for _ in range(4):
            statuses += await asyncio.gather(*(one() for _ in range(6)))
            if not (await _nodes(stack))[hung.id].healthy:
                break
        assert set(statuses) == {200, 504}, statuses
        assert not (await _nodes(stack))[hung.id].healthy, "the hung node's breaker never opened"
        # With its breaker open the hung node gets nothing: every request is answered at once.
        for _ in range(8):
            done = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=2
            )
            assert done.usage is not None and done.usage.completion_tokens == 2
    finally:
        await client.close()
