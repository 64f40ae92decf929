"""Budgets through the real gRPC server, Postgres and Redis: alert thresholds published once on
the event bus, a spent monthly limit or prepaid balance blocking the scope in Redis (and
budget.exhausted published), a raised limit or a new grant unblocking it, an environment's budget
blocking that environment only, and the keeper rewriting what Redis lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
import pytest
from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2
from tests.unit.billing.budget_support import costing, grant
from tests.unit.billing.support import RunningBilling, record, running_billing

TENANT = "tenant-budget"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def billing(
    database_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[RunningBilling]:
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    async with running_billing(database_url, **env) as running:
        yield running


def tenant_scope(tenant_id: str = TENANT) -> billing_pb2.BudgetScope:
    return billing_pb2.BudgetScope(tenant_id=tenant_id)


async def set_budget(
    billing: RunningBilling,
    scope: billing_pb2.BudgetScope,
    limit: int | None = None,
    thresholds: tuple[int, ...] = (),
    prepaid: bool = False,
) -> billing_pb2.Budget:
    request = billing_pb2.SetBudgetRequest(
        scope=scope, alert_thresholds=list(thresholds), prepaid=prepaid
    )
    if limit is not None:
        request.monthly_limit_micro_usd = limit
    return await billing.stub.SetBudget(request)


async def blocked(redis: Redis, prefix: str) -> dict[str, str]:
    raw = await redis.hgetall(f"{prefix}budget:blocked")
    return {k.decode(): v.decode() for k, v in raw.items()}


async def bus_events(redis: Redis, prefix: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(f"{prefix}events")
    return [orjson.loads(fields[b"event"]) for _, fields in entries]


def budget_events(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (e["kind"], e["data"].get("threshold_pct") or e["data"].get("reason"))
        for e in events
        if e["kind"].startswith("budget.")
    ]


async def test_thresholds_alert_once_and_the_limit_blocks_until_raised(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    budget = await set_budget(billing, tenant_scope(), 100_000, (50, 80, 100))
    assert (budget.blocked_reason, budget.spent_micro_usd) == ("", 0)

    await record(billing, costing("req-1", 60_000, TENANT))
    await record(billing, costing("req-2", 10_000, TENANT))  # 70%: nothing new
    assert budget_events(await bus_events(redis, redis_prefix)) == [("budget.threshold", 50)]
    assert await blocked(redis, redis_prefix) == {}

    await record(billing, costing("req-3", 40_000, TENANT))  # 110%
    events = await bus_events(redis, redis_prefix)
    assert budget_events(events) == [
        ("budget.threshold", 50),
        ("budget.threshold", 80),
        ("budget.threshold", 100),
        ("budget.exhausted", "monthly_limit"),
    ]
    exhausted = events[-1]
    assert exhausted["tenant_id"] == TENANT
    assert exhausted["data"]["budget_id"] == f"tenant:{TENANT}"
    assert exhausted["data"]["spent_micro_usd"] == 110_000
    assert exhausted["data"]["limit_micro_usd"] == 100_000
    assert exhausted["data"]["period"] == datetime.now(UTC).strftime("%Y-%m")
    assert await blocked(redis, redis_prefix) == {f"tenant:{TENANT}": "monthly_limit"}
    got = await billing.stub.GetBudget(billing_pb2.GetBudgetRequest(scope=tenant_scope()))
    assert (got.spent_micro_usd, got.blocked_reason) == (110_000, "monthly_limit")

    await record(billing, costing("req-4", 1_000, TENANT))  # no second alert or exhaustion
    assert len(budget_events(await bus_events(redis, redis_prefix))) == 4

    raised = await set_budget(billing, tenant_scope(), 200_000, (50, 80, 100))
    assert raised.blocked_reason == ""
    assert await blocked(redis, redis_prefix) == {}


async def test_a_prepaid_tenant_is_blocked_at_zero_balance_and_unblocked_by_a_grant(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    budget = await set_budget(billing, tenant_scope(), prepaid=True)
    assert budget.blocked_reason == "credit_exhausted"  # no credit at all yet
    assert await blocked(redis, redis_prefix) == {f"tenant:{TENANT}": "credit_exhausted"}

    await grant(billing, 50_000, tenant_id=TENANT)
    assert await blocked(redis, redis_prefix) == {}

    await record(billing, costing("req-1", 30_000, TENANT))
    assert await blocked(redis, redis_prefix) == {}
    await record(billing, costing("req-2", 30_000, TENANT))  # 10,000 beyond the balance
    assert await blocked(redis, redis_prefix) == {f"tenant:{TENANT}": "credit_exhausted"}
    spend = await billing.stub.GetSpend(billing_pb2.GetSpendRequest(tenant_id=TENANT))
    assert (spend.spent_micro_usd, spend.credit_balance_micro_usd) == (60_000, 0)
    assert budget_events(await bus_events(redis, redis_prefix))[-1] == (
        "budget.exhausted",
        "credit_exhausted",
    )

    await grant(billing, 5_000, kind="purchased", tenant_id=TENANT)
    assert await blocked(redis, redis_prefix) == {}


async def test_an_environment_budget_blocks_that_environment_only(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    scope = billing_pb2.BudgetScope(tenant_id=TENANT, environment_id="env-dev")
    await set_budget(billing, scope, 10_000)
    dev = costing("req-1", 12_000, TENANT)
    dev.environment_id = "env-dev"
    prod = costing("req-2", 50_000, TENANT)
    prod.environment_id = "env-prod"
    await record(billing, dev, prod)
    assert await blocked(redis, redis_prefix) == {"environment:env-dev": "monthly_limit"}

    spend = await billing.stub.GetSpend(
        billing_pb2.GetSpendRequest(tenant_id=TENANT, environment_id="env-dev")
    )
    assert spend.spent_micro_usd == 62_000
    assert spend.environment_budget.spent_micro_usd == 12_000
    assert spend.environment_budget.monthly_limit_micro_usd == 10_000
    assert spend.environment_budget.blocked_reason == "monthly_limit"
    assert not spend.budget.HasField("monthly_limit_micro_usd")


async def test_the_keeper_rewrites_what_redis_lost(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    await set_budget(billing, tenant_scope(), 0)
    assert await blocked(redis, redis_prefix) == {f"tenant:{TENANT}": "monthly_limit"}
    await redis.delete(f"{redis_prefix}budget:blocked")
    await redis.hset(f"{redis_prefix}budget:blocked", "tenant:stale", "monthly_limit")
    await billing.service.budgets.sync()
    assert await blocked(redis, redis_prefix) == {f"tenant:{TENANT}": "monthly_limit"}


@pytest.mark.parametrize(
    "request_",
    [
        billing_pb2.SetBudgetRequest(scope=billing_pb2.BudgetScope()),
        billing_pb2.SetBudgetRequest(scope=tenant_scope(), monthly_limit_micro_usd=-1),
        billing_pb2.SetBudgetRequest(scope=tenant_scope(), alert_thresholds=[0]),
        billing_pb2.SetBudgetRequest(scope=tenant_scope(), alert_thresholds=[1001]),
        billing_pb2.SetBudgetRequest(
            scope=billing_pb2.BudgetScope(tenant_id=TENANT, environment_id="e"), prepaid=True
        ),
    ],
    ids=["no-tenant", "negative-limit", "zero-threshold", "huge-threshold", "prepaid-env"],
)
async def test_bad_budgets_are_refused(
    billing: RunningBilling, request_: billing_pb2.SetBudgetRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.SetBudget(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_tenant_cannot_read_or_take_over_another_tenants_environment_budget(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    mine = billing_pb2.BudgetScope(tenant_id=TENANT, environment_id="env-mine")
    await set_budget(billing, mine, 10_000, thresholds=(50,))
    spent = costing("req-1", 4_000, TENANT)
    spent.environment_id = "env-mine"
    unbudgeted = costing("req-2", 3_000, TENANT)
    unbudgeted.environment_id = "env-free"
    await record(billing, spent, unbudgeted)

    for env in ("env-mine", "env-free"):
        theirs = billing_pb2.BudgetScope(tenant_id="tenant-other", environment_id=env)
        seen = await billing.stub.GetBudget(billing_pb2.GetBudgetRequest(scope=theirs))
        assert seen.spent_micro_usd == 0
        assert not seen.HasField("monthly_limit_micro_usd")
        spend = await billing.stub.GetSpend(
            billing_pb2.GetSpendRequest(tenant_id="tenant-other", environment_id=env)
        )
        assert spend.environment_budget.spent_micro_usd == 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await set_budget(billing, theirs, 0)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    own = await billing.stub.GetBudget(billing_pb2.GetBudgetRequest(scope=mine))
    assert (own.monthly_limit_micro_usd, own.spent_micro_usd) == (10_000, 4_000)
    assert await blocked(redis, redis_prefix) == {}


async def test_credit_budget_and_invoice_rpcs_answer_unavailable_without_the_database(
    database_url: str,
) -> None:
    stripe_env = {"STRIPE_API_KEY": "sk_test_fake", "STRIPE_REPORT_INTERVAL_S": "86400"}
    async with running_billing(database_url, **stripe_env) as billing:
        await billing.service.pool.close()
        stub = billing.stub
        calls = [
            stub.CreateCreditGrant(
                billing_pb2.CreateCreditGrantRequest(
                    tenant_id=TENANT, kind="promotional", amount_micro_usd=1
                )
            ),
            stub.ListCreditGrants(billing_pb2.ListCreditGrantsRequest(tenant_id=TENANT)),
            stub.ListCreditDraws(billing_pb2.ListCreditDrawsRequest(tenant_id=TENANT)),
            set_budget(billing, tenant_scope(), 1),
            stub.GetBudget(billing_pb2.GetBudgetRequest(scope=tenant_scope())),
            stub.GetSpend(billing_pb2.GetSpendRequest(tenant_id=TENANT)),
            stub.ListInvoices(billing_pb2.ListInvoicesRequest(tenant_id=TENANT)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_after_a_raised_limit_the_new_limits_thresholds_alert(
    billing: RunningBilling, redis: Redis, redis_prefix: str
) -> None:
    await set_budget(billing, tenant_scope(), 10_000, (50, 80))
    await record(billing, costing("req-1", 9_000, TENANT))  # 90%: both alert
    await set_budget(billing, tenant_scope(), 20_000, (50, 80))  # now 45%
    await record(billing, costing("req-2", 2_000, TENANT))  # 55% of the new limit
    await record(billing, costing("req-3", 1_000, TENANT))  # 60%: nothing new
    alerts = [
        (e["data"]["threshold_pct"], e["data"]["limit_micro_usd"])
        for e in await bus_events(redis, redis_prefix)
        if e["kind"] == "budget.threshold"
    ]
    assert alerts == [(50, 10_000), (80, 10_000), (50, 20_000)]
    # A threshold already passed when the budget is set is not announced late.
    await set_budget(billing, tenant_scope(), 20_000, (10, 50, 80))
    await record(billing, costing("req-4", 1_000, TENANT))  # 65%
    assert len([e for e in await bus_events(redis, redis_prefix) if "threshold" in e["kind"]]) == 3


async def test_a_threshold_alert_the_bus_did_not_take_is_sent_with_the_next_spend(
    billing: RunningBilling, redis: Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = billing.service.notifier.bus
    assert bus is not None
    publish = bus.publish
    failures = [True]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures and failures.pop():
            return None  # what publish answers when Redis did not take the event
        return await publish(*args, **kwargs)

    monkeypatch.setattr(bus, "publish", flaky)
    await set_budget(billing, tenant_scope(), 10_000, (50, 80))
    await record(billing, costing("req-1", 6_000, TENANT))  # 60%: the alert is lost
    assert budget_events(await bus_events(redis, redis_prefix)) == []
    await record(billing, costing("req-2", 100, TENANT))
    await record(billing, costing("req-3", 100, TENANT))
    assert budget_events(await bus_events(redis, redis_prefix)) == [("budget.threshold", 50)]


async def test_a_duplicate_event_counts_its_spend_once(billing: RunningBilling) -> None:
    first = costing("req-1", 5_000, TENANT)
    first.environment_id = "env-dup"
    await record(billing, first, first)  # twice in one batch
    await record(billing, first)  # and again later
    spend = await billing.stub.GetSpend(
        billing_pb2.GetSpendRequest(tenant_id=TENANT, environment_id="env-dup")
    )
    assert (spend.spent_micro_usd, spend.environment_budget.spent_micro_usd) == (5_000, 5_000)
