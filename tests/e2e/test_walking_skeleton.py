"""The walking skeleton end to end: four services as separate processes, two simulated nodes,
a tenant and key made through the admin API, chats through the official openai SDK, and
billing's ledger holding exactly the tokens the simulator reported."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import openai

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack

MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Tell me about inference clouds, briefly."}]


async def _tenant_and_key(stack: Stack) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant("Acme", "ops@acme.example")
        key = await admin.create_key(tenant["id"], "e2e")
    assert key["key"].startswith("sk-cic-")
    return tenant["id"], key["key"]


async def _ledger(database_url: str, tenant_id: str, expected_rows: int) -> list[asyncpg.Record]:
    """Billing's rows for the tenant, once as many as expected have arrived (usage is sent
    after the response, so it may trail the client by a moment)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 15
        while True:
            rows = await conn.fetch(
                "SELECT request_id, model, node_id, prompt_tokens, completion_tokens, streamed"
                " FROM billing.usage_events WHERE tenant_id = $1 ORDER BY finished_at",
                tenant_id,
            )
            if len(rows) >= expected_rows or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_chat_through_the_platform_is_billed_exactly(stack: Stack, database_url: str) -> None:
    tenant_id, key = await _tenant_and_key(stack)
    client = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)
    try:
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]

        plain = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
        assert plain.choices[0].message.content
        assert plain.usage is not None and plain.usage.completion_tokens == 12

        chunks = []
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            chunks.append(chunk)
        usage_chunks = [c for c in chunks if c.usage is not None]
        assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
        streamed_usage = usage_chunks[0].usage
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and streamed_usage.completion_tokens == 20

        quiet = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, stream=True
        )
        quiet_chunks = [c async for c in quiet]
        assert all(c.usage is None for c in quiet_chunks), (
            "usage chunk sent to a client that did not ask"
        )
    finally:
        await client.close()

    rows = await _ledger(database_url, tenant_id, expected_rows=3)
    assert len(rows) == 3
    assert len({r["request_id"] for r in rows}) == 3
    assert {r["node_id"] for r in rows} <= set(stack.node_ids)
    reported = [
        (plain.usage.prompt_tokens, plain.usage.completion_tokens, False),
        (streamed_usage.prompt_tokens, streamed_usage.completion_tokens, True),
        # The simulator's counts are deterministic: the same prompt and max_tokens as `plain`.
        (plain.usage.prompt_tokens, plain.usage.completion_tokens, True),
    ]
    assert [(r["prompt_tokens"], r["completion_tokens"], r["streamed"]) for r in rows] == reported

    async with aiohttp.ClientSession() as session:
        usage = await AdminClient(session, stack.gateway_url, stack.config.admin_token).usage(
            tenant_id
        )
    assert usage["requests"] == 3
    assert usage["prompt_tokens"] == sum(r[0] for r in reported)
    assert usage["completion_tokens"] == sum(r[1] for r in reported)
    assert usage["cost_usd"] > 0
