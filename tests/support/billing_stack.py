"""The platform for the billing end-to-end tests, with settings of their own (a Redis prefix per
test, Stripe pointed at a local fake), and the ledger and the usage outbox read straight from
Postgres and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
import asyncpg
from redis.asyncio import Redis

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack
from tests.support.platform import running_platform


@contextlib.asynccontextmanager
async def billing_stack(
    name: str,
    database_url: str,
    redis_url: str,
    env: Mapping[str, str],
    node_count: int = 1,
) -> AsyncIterator[Stack]:
    """The platform (tests.support.platform) with ``env`` added to every process's environment,
    its Redis keys under ``env``'s REDIS_KEY_PREFIX (else a fresh one); logs under e2e/<name>."""
    prefix = env.get("REDIS_KEY_PREFIX") or f"cic-e2e-{secrets.token_hex(4)}:"
    async with running_platform(
        database_url, redis_url, prefix, f"e2e/{name}", env=env, node_count=node_count
    ) as stack:
        yield stack


async def tenant_and_key(stack: Stack, name: str = "Acme") -> tuple[str, str]:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant(name, f"{secrets.token_hex(4)}@example.com")
        key = await admin.create_key(tenant["id"], "e2e")
    return tenant["id"], key["key"]


async def ledger(database_url: str, tenant_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT request_id, prompt_tokens, completion_tokens, cost_micro_usd, streamed"
            " FROM billing.usage_events WHERE tenant_id = $1 ORDER BY request_id",
            tenant_id,
        )
    finally:
        await conn.close()


async def wait_for_ledger(
    database_url: str, tenant_id: str, rows: int, timeout_s: float = 30.0
) -> list[asyncpg.Record]:
    """The tenant's ledger rows once there are at least ``rows`` of them (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await ledger(database_url, tenant_id)
        if len(found) >= rows or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def outbox_entries(redis_url: str, prefix: str) -> int:
    client = Redis.from_url(redis_url)
    try:
        return int(await client.xlen(f"{prefix}usage-outbox"))
    finally:
        await client.aclose()
