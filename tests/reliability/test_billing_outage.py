"""Billing killed for a minute under steady load: the tenants never notice, and once billing is
back the ledger holds every request the clients were answered, once each, to the token."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import orjson
import pytest

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
from tests.support.platform import running_platform

MODEL = "cic-sim-small"
# The scenario is a minute; CIC_TEST_BILLING_OUTAGE_S shortens it for a quick local run.
OUTAGE_S = float(os.environ.get("CIC_TEST_BILLING_OUTAGE_S", "60"))


@pytest.fixture
async def stack(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Stack]:
    async with running_platform(
        database_url, redis_url, redis_prefix, "reliability/billing_outage", log_level="WARNING"
    ) as running:
        yield running


async def test_billing_down_for_a_minute_under_load_loses_no_usage(
    stack: Stack, database_url: str
) -> None:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenants = []
        for n in range(3):
            tenant = await admin.create_tenant(f"T{n}", f"outage-{n}@example.com")
            tenants.append((tenant["id"], (await admin.create_key(tenant["id"], "k"))["key"]))

    told: dict[str, tuple[str, int]] = {}  # request id -> (tenant, tokens the client was told)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        tenant_id, key = tenants[n % len(tenants)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            i = 0
            while not stop.is_set():
                i += 1
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"request {n}.{i}"}],
                    "max_tokens": 1 + (i % 7),
                }
                async with session.post(
                    f"{stack.gateway_url}/v1/chat/completions",
                    data=orjson.dumps(body),
                    headers=headers,
                ) as resp:
                    statuses.append(resp.status)
                    if resp.status == 200:
                        usage = (await resp.json())["usage"]
                        told[resp.headers["x-request-id"]] = (tenant_id, usage["total_tokens"])
                await asyncio.sleep(0.02)

    load = [asyncio.create_task(client(n)) for n in range(6)]
    await asyncio.sleep(2)
    stack.processes["billing"].kill()
    await stack.processes["billing"].stop()
    during_start = len(statuses)
    await asyncio.sleep(OUTAGE_S)
    during = statuses[during_start:]
    await stack.start_service("billing")
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*load)

    assert during and set(during) == {200}, "tenants noticed the billing outage"
    assert set(statuses) == {200}
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            rows = await conn.fetch(
                "SELECT request_id, tenant_id::text AS tenant,"
                " prompt_tokens + completion_tokens AS tokens FROM billing.usage_events"
            )
            if len(rows) >= len(told) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    ledger = {r["request_id"]: (r["tenant"], r["tokens"]) for r in rows}
    assert len(rows) == len(ledger), "a request is in the ledger twice"
    assert ledger == told
