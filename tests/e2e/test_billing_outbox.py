"""No usage lost, none counted twice, across billing and gateway restarts: the four services as
real processes, requests through the real gateway, and billing's ledger read from Postgres.

While billing is down the gateway keeps serving and holds each request's usage in its Redis
outbox; once billing is back every request is in the ledger exactly once, with the tokens the
node reported. A gateway that stops (gracefully, or killed) in the middle loses nothing either:
the next one takes over what the first had read but not had confirmed."""

from __future__ import annotations

import asyncio
import secrets
import time

import openai
import pytest

from cic_devstack.stack import Stack
from tests.support.billing_stack import (
    billing_stack,
    ledger,
    outbox_entries,
    tenant_and_key,
    wait_for_ledger,
)

pytestmark = pytest.mark.e2e

MODEL = "cic-sim-small"


@pytest.fixture
def prefix() -> str:
    return f"cic-e2e-{secrets.token_hex(4)}:"


def _env(prefix: str) -> dict[str, str]:
    # A replica's unconfirmed entries are taken over after 1 s (30 s by default).
    return {"REDIS_KEY_PREFIX": prefix, "USAGE_OUTBOX_CLAIM_IDLE_S": "1"}


async def _requests(stack: Stack, key: str, count: int) -> dict[str, tuple[int, int]]:
    """``count`` chat completions, every other one streamed; the gateway's request id of each
    with the prompt and completion tokens the node reported."""
    client = openai.AsyncOpenAI(api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0)
    usage: dict[str, tuple[int, int]] = {}
    try:
        for i in range(count):
            messages = [{"role": "user", "content": f"request {i}: say something"}]
            if i % 2:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=3 + i % 5,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in raw.parse()]
                [counted] = [c.usage for c in chunks if c.usage is not None]
            else:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=3 + i % 5,
                )
                counted = raw.parse().usage
            assert counted is not None
            usage[raw.headers["x-request-id"]] = (counted.prompt_tokens, counted.completion_tokens)
    finally:
        await client.close()
    return usage


async def _wait_for_outbox(redis_url: str, prefix: str, entries: int) -> None:
    deadline = time.monotonic() + 15
    while await outbox_entries(redis_url, prefix) < entries:
        assert time.monotonic() < deadline, "usage never reached the outbox"
        await asyncio.sleep(0.05)


def _as_usage(rows: list) -> dict[str, tuple[int, int]]:
    return {r["request_id"]: (r["prompt_tokens"], r["completion_tokens"]) for r in rows}


async def test_usage_made_while_billing_is_down_is_recorded_once_when_it_is_back(
    database_url: str, redis_url: str, prefix: str
) -> None:
    async with billing_stack("billing_down", database_url, redis_url, _env(prefix)) as stack:
        tenant_id, key = await tenant_and_key(stack)
        assert await stack.processes["billing"].stop() == 0

        sent = await _requests(stack, key, 12)
        await _wait_for_outbox(redis_url, prefix, 12)
        assert await ledger(database_url, tenant_id) == []

        await stack.start_service("billing")
        rows = await wait_for_ledger(database_url, tenant_id, 12)
        assert _as_usage(rows) == sent  # every request once, with the node's own counts
        assert len(rows) == 12
        assert {r["streamed"] for r in rows} == {True, False}

        more = await _requests(stack, key, 2)  # and it goes on working as usual
        rows = await wait_for_ledger(database_url, tenant_id, 14)
        assert _as_usage(rows) == sent | more
        deadline = time.monotonic() + 10
        while await outbox_entries(redis_url, prefix):  # delivered entries are deleted
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_gateway_restarts_in_the_middle_lose_nothing(
    database_url: str, redis_url: str, prefix: str
) -> None:
    async with billing_stack("gateway_restart", database_url, redis_url, _env(prefix)) as stack:
        tenant_id, key = await tenant_and_key(stack)
        assert await stack.processes["billing"].stop() == 0

        first = await _requests(stack, key, 6)
        await _wait_for_outbox(redis_url, prefix, 6)
        assert await stack.processes["gateway"].stop() == 0  # SIGTERM: a graceful stop
        await stack.start_service("gateway")

        second = await _requests(stack, key, 6)
        await _wait_for_outbox(redis_url, prefix, 12)
        stack.processes["gateway"].kill()  # a crash: no chance to tidy up
        await stack.processes["gateway"].stop()
        await stack.start_service("gateway")

        await stack.start_service("billing")
        rows = await wait_for_ledger(database_url, tenant_id, 12)
        await asyncio.sleep(1.5)  # a claim round after the last: nothing more may arrive
        rows = await ledger(database_url, tenant_id)
        assert _as_usage(rows) == first | second
        assert len(rows) == 12
