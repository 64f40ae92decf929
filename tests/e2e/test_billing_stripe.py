"""Stripe end to end: the four services as real processes, billing's real ``stripe`` SDK talking
to a local fake of Stripe's API, and Stripe's webhooks posted to the real gateway.

Usage becomes one customer per tenant and meter events that add up to the ledger's cost; a
signed ``invoice.payment_failed`` suspends the tenant (its key gets 403 at once), a redelivery
changes nothing, a bad or stale signature is 400 and changes nothing, ``invoice.paid`` lets the
key work again; and a price changed through the admin API prices the requests after it."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from cic_devstack.stack import Stack
from tests.support import stores
from tests.support.billing_stack import billing_stack, tenant_and_key, wait_for_ledger
from tests.support.fake_stripe import FakeStripe, event_body, signature_header

pytestmark = pytest.mark.e2e

MODEL = "cic-sim-small"
SECRET = "whsec_e2e" + secrets.token_hex(8)


@pytest.fixture(scope="module")
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """One database for the module's stack (each test makes a tenant of its own)."""
    name, url = await stores.create_database(postgres_server_url)
    try:
        yield url
    finally:
        await stores.drop_database(postgres_server_url, name)


@pytest.fixture(scope="module")
async def stack(database_url: str, redis_url: str, fake_stripe: FakeStripe) -> AsyncIterator[Stack]:
    """One stack for the module: starting one takes seconds."""
    env = {
        "REDIS_KEY_PREFIX": f"cic-e2e-{secrets.token_hex(4)}:",
        "STRIPE_API_KEY": "sk_test_e2e",
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "STRIPE_REPORT_INTERVAL_S": "1",
        "STRIPE_RETRY_INITIAL_S": "0.05",
    }
    async with billing_stack("stripe", database_url, redis_url, env) as running:
        yield running


async def _chat(session: aiohttp.ClientSession, stack: Stack, key: str) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with session.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        await resp.read()
        return resp.status


async def _webhook(
    session: aiohttp.ClientSession, stack: Stack, body: bytes, signature: str
) -> tuple[int, dict]:
    async with session.post(
        f"{stack.gateway_url}/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def _stored_events(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM billing.stripe_events"))
    finally:
        await conn.close()


async def _wait_for_stripe_total(fake: FakeStripe, tenant_id: str, total: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        customers = [
            c for c in fake.customers.values() if c["metadata"]["cic_tenant_id"] == tenant_id
        ]
        if customers and fake.total(customers[0]["id"]) == total:
            return
        assert time.monotonic() < deadline, (total, fake.meter_events)
        await asyncio.sleep(0.1)


async def test_usage_is_metered_and_webhooks_suspend_and_reactivate(
    stack: Stack, database_url: str, fake_stripe: FakeStripe
) -> None:
    tenant_id, key = await tenant_and_key(stack)
    async with aiohttp.ClientSession() as session:
        assert [await _chat(session, stack, key) for _ in range(3)] == [200] * 3
        rows = await wait_for_ledger(database_url, tenant_id, 3)
        cost = sum(r["cost_micro_usd"] for r in rows)
        assert cost > 0

        await _wait_for_stripe_total(fake_stripe, tenant_id, cost)
        customer = fake_stripe.customer_of(tenant_id)
        [created] = [
            r
            for r in fake_stripe.sent("/v1/customers")
            if r.form["metadata[cic_tenant_id]"] == tenant_id
        ]
        assert created.idempotency_key == f"cic-customer-{tenant_id}"
        meter_events = [
            r
            for r in fake_stripe.sent("/v1/billing/meter_events")
            if r.form["payload[stripe_customer_id]"] == customer
        ]
        assert all(r.status == 200 for r in meter_events)
        assert all(r.form["identifier"].startswith(f"cic-{tenant_id}-") for r in meter_events)
        assert sum(int(r.form["payload[value]"]) for r in meter_events) == cost

        failed = event_body("evt_failed", "invoice.payment_failed", customer)
        status, answer = await _webhook(session, stack, failed, signature_header(failed, SECRET))
        assert (status, answer) == (
            200,
            {"received": True, "event_id": "evt_failed", "duplicate": False},
        )
        assert await _chat(session, stack, key) == 403

        # Stripe delivers again: acknowledged, nothing processed twice.
        status, answer = await _webhook(session, stack, failed, signature_header(failed, SECRET))
        assert (status, answer["duplicate"]) == (200, True)

        paid = event_body("evt_paid", "invoice.paid", customer)
        stored = await _stored_events(database_url)
        for signature in (
            signature_header(paid, "whsec_not_ours"),
            signature_header(paid, SECRET, int(time.time()) - 301),
            signature_header(paid, SECRET, int(time.time()) + 301),
            signature_header(b"{}", SECRET),
        ):
            status, answer = await _webhook(session, stack, paid, signature)
            assert status == 400, answer
            assert answer["error"]["type"] == "invalid_request_error"
        assert await _stored_events(database_url) == stored
        assert await _chat(session, stack, key) == 403  # still suspended: nothing changed

        status, answer = await _webhook(session, stack, paid, signature_header(paid, SECRET))
        assert (status, answer["duplicate"]) == (200, False)
        assert await _chat(session, stack, key) == 200


async def test_a_price_changed_through_the_admin_api_prices_later_requests(
    stack: Stack, database_url: str
) -> None:
    tenant_id, key = await tenant_and_key(stack)
    admin = {"X-Admin-Token": stack.config.admin_token}
    async with aiohttp.ClientSession() as session:
        assert await _chat(session, stack, key) == 200
        [before] = await wait_for_ledger(database_url, tenant_id, 1)
        async with session.put(
            f"{stack.gateway_url}/admin/prices/{MODEL}",
            json={"prompt_micro_usd_per_mtok": 10_000_000, "completion_micro_usd_per_mtok": 0},
            headers=admin,
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{stack.gateway_url}/admin/prices", headers=admin) as resp:
            prices = {p["model"]: p for p in (await resp.json())["data"]}
        assert prices[MODEL]["prompt_micro_usd_per_mtok"] == 10_000_000

        assert await _chat(session, stack, key) == 200
        rows = await wait_for_ledger(database_url, tenant_id, 2)
    [after] = [r for r in rows if r["request_id"] != before["request_id"]]
    assert after["cost_micro_usd"] == after["prompt_tokens"] * 10  # $10 per million, exactly
    # The earlier request keeps the cost of the price it was recorded with ($0.10 / $0.20).
    numerator = before["prompt_tokens"] * 100_000 + before["completion_tokens"] * 200_000
    assert before["cost_micro_usd"] == (numerator + 500_000) // 1_000_000
