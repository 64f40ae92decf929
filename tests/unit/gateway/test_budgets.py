"""Credits, budgets and their enforcement through the gateway, against the real billing service
(Postgres, Redis, Stripe's fake): the admin routes, GET /v1/billing, a spent monthly limit refused
on two gateway processes within seconds and served again once raised, a prepaid tenant refused at
zero balance until a grant, and an environment's budget refusing that environment's keys only."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic_gateway.budget_gate import BudgetGate
from cic_gateway.errors import ApiError
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.store import KeyAuth
from tests.support.fake_stripe import FakeStripe
from tests.unit.billing.support import RunningBilling, running_billing, stripe_billing_env
from tests.unit.gateway.conftest import ADMIN_TOKEN, Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.processes import gateway_replicas
from tests.unit.gateway.sims import SIM_MODEL, SimFarm

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
WAIT_S = 15.0
CHAT = {
    "model": SIM_MODEL,
    "messages": [{"role": "user", "content": "count my tokens " * 20}],
    "max_tokens": 2,
}


@pytest.fixture
async def billing(
    database_url: str, redis_url: str, redis_prefix: str, fake_stripe: FakeStripe
) -> AsyncIterator[RunningBilling]:
    env = stripe_billing_env(redis_url, redis_prefix, fake_stripe)
    async with running_billing(database_url, **env) as running:
        yield running


@pytest.fixture
async def gateway(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm, billing: RunningBilling
) -> Gateway:
    sim = await sims.start()
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    return await start_gateway(BILLING_ADDR=billing.address)


async def _send(
    session: aiohttp.ClientSession, method: str, url: str, key: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else ADMIN
    async with session.request(method, url, headers=headers, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def _chat(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, Any]:
    return await _send(session, "POST", url + "/v1/chat/completions", key, json=CHAT)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def _refused(status: int, body: Any) -> bool:
    return status == 429 and body["error"]["code"] == "insufficient_quota"


async def test_credit_and_budget_routes_and_the_tenants_billing(
    gateway: Gateway, billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    session, url = gateway.session, gateway.url
    tenant_id, _, developer = await gateway.new_key()
    status, admin_key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "a", "role": "admin"}
    )
    assert status == 201
    status, reader = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "r", "role": "read-only"}
    )
    assert status == 201

    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    status, grant = await gateway.admin(
        "POST",
        f"/admin/tenants/{tenant_id}/credits",
        {"kind": "promotional", "amount_usd": "0.50", "expires_at": expires},
    )
    assert status == 201, grant
    assert (grant["amount_micro_usd"], grant["remaining_micro_usd"]) == (500_000, 500_000)
    too_far = {"kind": "purchased", "amount_usd": 1, "expires_at": "9999-12-31T23:00:00-05:00"}
    for bad in ({"kind": "gift", "amount_usd": 1}, {"kind": "purchased", "amount_usd": 0}, too_far):
        status, body = await gateway.admin("POST", f"/admin/tenants/{tenant_id}/credits", bad)
        assert (status, body["error"]["type"]) == (400, "invalid_request_error"), body
    status, _ = await gateway.admin(
        "POST", "/admin/tenants/ten_nobody/credits", {"kind": "purchased", "amount_usd": 1}
    )
    assert status == 404

    status, budget = await gateway.admin(
        "PUT",
        f"/admin/tenants/{tenant_id}/budget",
        {"monthly_limit_usd": 100, "alert_thresholds": [80, 50]},
    )
    assert status == 200, budget
    assert budget["monthly_limit_micro_usd"] == 100_000_000
    assert budget["alert_thresholds"] == [50, 80]
    assert (budget["blocked"], budget["prepaid"]) == (False, False)
    status, body = await gateway.admin(
        "PUT", f"/admin/tenants/{tenant_id}/budget", {"monthly_limit_usd": -1}
    )
    assert status == 400, body

    status, _ = await _chat(session, url, developer)
    assert status == 200
    await _eventually(lambda: _has_rows(billing, 1), "the request never reached the ledger")
    [row] = await billing.ledger_rows()
    cost = row["cost_micro_usd"]
    assert cost > 0 and row["credit_micro_usd"] == cost

    assert billing.service.reporter is not None
    customer = await billing.service.reporter.customer(tenant_id)
    invoice = fake_stripe.add_invoice(customer, 1_999, 1_999)

    status, body = await _send(session, "GET", url + "/v1/billing", admin_key["key"])
    assert status == 200, body
    assert body["spend_micro_usd"] == cost
    assert body["credit_balance_micro_usd"] == 500_000 - cost
    assert body["budget"]["monthly_limit_usd"] == 100
    assert body["budget"]["spent_micro_usd"] == cost
    assert body["environment_budget"]["monthly_limit_usd"] is None
    assert body["invoices_available"] is True
    assert body["invoices"] == [
        {
            "id": invoice["id"],
            "number": invoice["number"],
            "status": "paid",
            "currency": "usd",
            "amount_due_usd": 19.99,
            "amount_paid_usd": 19.99,
            "created": datetime.fromtimestamp(invoice["created"], UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "hosted_invoice_url": invoice["hosted_invoice_url"],
        }
    ]
    status, _ = await _send(session, "GET", url + "/v1/billing", reader["key"])
    assert status == 200
    status, body = await _send(session, "GET", url + "/v1/billing", developer)
    assert (status, body["error"]["code"]) == (403, "insufficient_role")

    status, draws = await gateway.admin(
        "GET", f"/admin/tenants/{tenant_id}/credits/draws?request_id={row['request_id']}"
    )
    assert status == 200
    assert [(d["grant_id"], d["amount_micro_usd"]) for d in draws["data"]] == [(grant["id"], cost)]
    for limit in ("0", "1001", "%C2%B2", "9" * 5000):  # '²' passes str.isdigit(), not int()
        status, error = await gateway.admin(
            "GET", f"/admin/tenants/{tenant_id}/credits/draws?limit={limit}"
        )
        assert (status, error["error"]["param"]) == (400, "limit"), (limit, error)
    status, grants = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/credits")
    assert (status, grants["balance_micro_usd"]) == (200, 500_000 - cost)


async def _has_rows(billing: RunningBilling, count: int) -> bool:
    return len(await billing.ledger_rows()) >= count


async def test_prepaid_and_environment_budgets_refuse_only_their_scope(gateway: Gateway) -> None:
    session, url = gateway.session, gateway.url
    tenant_id, _, production = await gateway.new_key()
    status, dev = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "dev"}
    )
    assert status == 201, dev
    status, dev_key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "d", "environment_id": dev["id"]}
    )
    assert status == 201

    status, budget = await gateway.admin(
        "PUT", f"/admin/environments/{dev['id']}/budget", {"monthly_limit_usd": 0}
    )
    assert (status, budget["blocked_reason"], budget["environment_id"]) == (
        200,
        "monthly_limit",
        dev["id"],
    )

    async def dev_refused() -> bool:
        return _refused(*await _chat(session, url, dev_key["key"]))

    await _eventually(dev_refused, "the environment's keys were never refused")
    status, body = await _chat(session, url, dev_key["key"])
    assert body["error"]["type"] == "insufficient_quota"
    assert "environment 'dev'" in body["error"]["message"]
    assert (await _chat(session, url, production))[0] == 200

    status, budget = await gateway.admin(
        "PUT", f"/admin/tenants/{tenant_id}/budget", {"prepaid": True}
    )
    assert (status, budget["blocked_reason"]) == (200, "credit_exhausted")

    async def production_refused() -> bool:
        return _refused(*await _chat(session, url, production))

    await _eventually(production_refused, "the prepaid tenant was never refused at zero credit")
    status, _ = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/credits", {"kind": "purchased", "amount_usd": 5}
    )
    assert status == 201

    async def production_served() -> bool:
        return (await _chat(session, url, production))[0] == 200

    await _eventually(production_served, "a grant never unblocked the prepaid tenant")
    assert await dev_refused()  # the environment's own budget still holds


@pytest.fixture
async def two_gateways(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    services: FakeServices,
    sims: SimFarm,
    billing: RunningBilling,
    tmp_path: Path,
) -> AsyncIterator[list[str]]:
    sim = await sims.start()
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SCHEDULER_ADDR": services.address,
        "BILLING_ADDR": billing.address,
        "ORCHESTRATOR_ADDR": services.address,
        "USAGE_FLUSH_INTERVAL_S": "0.05",
        "LOG_FORMAT": "console",
    }
    async with gateway_replicas(env, tmp_path) as urls:
        yield urls


async def test_a_spent_limit_is_refused_on_both_replicas_and_a_raise_serves_again(
    two_gateways: list[str],
) -> None:
    first, second = two_gateways
    async with aiohttp.ClientSession() as session:
        status, tenant = await _send(
            session, "POST", first + "/admin/tenants", json={"name": "B", "email": "b@example.com"}
        )
        assert status == 201
        status, key = await _send(
            session, "POST", second + f"/admin/tenants/{tenant['id']}/keys", json={"name": "k"}
        )
        assert status == 201
        status, budget = await _send(
            session,
            "PUT",
            first + f"/admin/tenants/{tenant['id']}/budget",
            json={"monthly_limit_usd": "0.000001"},
        )
        assert (status, budget["blocked"]) == (200, False)

        # The first request's cost (at least one micro-dollar) spends the whole limit.
        assert (await _chat(session, first, key["key"]))[0] == 200

        async def both_refuse() -> bool:
            answers = [await _chat(session, url, key["key"]) for url in two_gateways]
            return all(_refused(*answer) for answer in answers)

        await _eventually(both_refuse, "the replicas did not both refuse the spent budget")

        status, budget = await _send(
            session,
            "PUT",
            second + f"/admin/tenants/{tenant['id']}/budget",
            json={"monthly_limit_usd": 100},
        )
        assert (status, budget["blocked"]) == (200, False)

        async def both_serve() -> bool:
            answers = [await _chat(session, url, key["key"]) for url in two_gateways]
            return all(status == 200 for status, _ in answers)

        await _eventually(both_serve, "the replicas did not both serve again after the raise")


async def test_a_blocked_scope_hash_with_bytes_that_are_not_utf8_still_refreshes(
    redis_url: str, redis_prefix: str
) -> None:
    """A stray field that is not UTF-8 neither fails the gate's start nor stops its refreshes:
    a scope blocked afterwards is still refused within a refresh."""

    def auth(tenant_id: str) -> KeyAuth:
        return KeyAuth(tenant_id, tenant_id, "active", False, None, None, None, None)

    redis = Redis.from_url(redis_url)
    gate = BudgetGate(redis, redis_prefix, 0.05, GatewayMetrics(CollectorRegistry()))
    try:
        await redis.hset(gate.hash, mapping={b"tenant:\xff\xfe": b"\xff", "tenant:a": "x"})
        await gate.start()
        with pytest.raises(ApiError) as refused:
            gate.check(auth("a"))
        assert (refused.value.status, refused.value.code) == (429, "insufficient_quota")
        await redis.hset(gate.hash, "tenant:b", "monthly_limit")
        for _ in range(100):
            if "tenant:b" in gate.blocked:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(ApiError):
            gate.check(auth("b"))
    finally:
        await gate.close()
        await redis.aclose()
