"""The whole platform as real processes (cic_devstack's Stack) for the billing end-to-end tests,
with settings of their own (a Redis prefix per test, Stripe pointed at a local fake), and the
ledger and the usage outbox read straight from Postgres and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import asyncpg
from redis.asyncio import Redis

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Ports, Stack, StackConfig
from tests.support.net import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


@contextlib.asynccontextmanager
async def billing_stack(
    name: str,
    database_url: str,
    redis_url: str,
    env: Mapping[str, str],
    node_count: int = 1,
) -> AsyncIterator[Stack]:
    """Starts the stack with ``env`` added to every process's environment; stops it after and
    checks that every process exited 0."""
    log_dir = ARTIFACTS / name
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    config = StackConfig(
        database_url=database_url,
        redis_url=redis_url,
        admin_token=secrets.token_urlsafe(32),
        bin_dir=Path(sys.executable).parent,
        ports=Ports(*(free_port() for _ in range(8))),
        log_dir=log_dir,
        log_format="json",
        node_count=node_count,
        base_env={"PATH": str(Path(sys.executable).parent), "HOME": str(log_dir), **env},
    )
    stack = Stack(config)
    await stack.start()
    try:
        yield stack
    finally:
        codes = await stack.stop()
        assert all(code in (0, None) for code in codes.values()), (
            f"services did not exit cleanly: {codes} (logs in {log_dir})"
        )


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
