"""Meter reports through the real ``stripe`` SDK against the local fake of Stripe's API: the exact
requests Stripe receives, retries on 429/5xx, duplicates counted as delivered, refusals, and
the reconciliation that re-sends what Stripe is missing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.support.fake_stripe import FakeStripe
from tests.unit.billing.support import RunningBilling, record, running_billing, usage_event

METER_PATH = "/v1/billing/meter_events"


@pytest.fixture
async def billing(database_url: str, fake_stripe: FakeStripe) -> AsyncIterator[RunningBilling]:
    env = {
        "STRIPE_API_KEY": "sk_test_fake",
        "STRIPE_API_BASE": fake_stripe.url,
        # Rounds are run by the tests, not by the clock.
        "STRIPE_REPORT_INTERVAL_S": "86400",
        "STRIPE_RECONCILE_INTERVAL_S": "0",
        "STRIPE_RETRY_INITIAL_S": "0.01",
        "STRIPE_RETRY_MAX_S": "0.02",
        "STRIPE_MAX_ATTEMPTS": "3",
    }
    async with running_billing(database_url, **env) as running:
        yield running


async def _reports(billing: RunningBilling) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(billing.database_url)
    try:
        return await conn.fetch(
            "SELECT id, tenant_id, identifier, value_micro_usd, events, state, attempts,"
            " extract(epoch FROM window_start)::bigint AS window FROM billing.meter_reports"
            " ORDER BY tenant_id, id"
        )
    finally:
        await conn.close()


async def _sql(billing: RunningBilling, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(billing.database_url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def _round(billing: RunningBilling):  # type: ignore[no-untyped-def]
    reporter = billing.service.reporter
    assert reporter is not None
    return await reporter.run_round()


async def test_one_meter_event_per_tenant_with_the_summed_cost(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await record(
        billing,
        usage_event("a1", tenant_id="ten_a", prompt_tokens=1_000_000, completion_tokens=0),
        usage_event("a2", tenant_id="ten_a", prompt_tokens=0, completion_tokens=1_000_000),
        usage_event("b1", tenant_id="ten_b", prompt_tokens=10, completion_tokens=20),
    )
    result = await _round(billing)
    assert (result.events_claimed, result.reports_sent, result.reports_failed) == (3, 2, 0)

    customers = fake_stripe.sent("/v1/customers")
    assert sorted((c.form["metadata[cic_tenant_id]"], c.idempotency_key) for c in customers) == [
        ("ten_a", "cic-customer-ten_a"),
        ("ten_b", "cic-customer-ten_b"),
    ]
    reports = await _reports(billing)
    assert [(r["tenant_id"], r["value_micro_usd"], r["events"], r["state"]) for r in reports] == [
        ("ten_a", 300_000, 2, "sent"),
        ("ten_b", 5, 1, "sent"),
    ]
    window = reports[0]["window"]
    sent = sorted(fake_stripe.sent(METER_PATH), key=lambda r: r.form["identifier"])
    assert [r.form for r in sent] == [
        {
            "event_name": "cic_usage_micro_usd",
            "identifier": f"cic-{tenant}-{window}",
            "timestamp": str(window),
            "payload[stripe_customer_id]": fake_stripe.customer_of(tenant),
            "payload[value]": str(value),
        }
        for tenant, value in (("ten_a", 300_000), ("ten_b", 5))
    ]
    assert [r.status for r in sent] == [200, 200]

    # Nothing new: the next round sends nothing, and events stay counted once.
    again = await _round(billing)
    assert (again.events_claimed, again.reports_sent) == (0, 0)
    assert len(fake_stripe.requests) == 4


async def test_a_tenant_keeps_its_customer(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await record(billing, usage_event("a1", tenant_id="ten_a"))
    await _round(billing)
    await _sql(  # as if that report was made an hour ago
        billing,
        "UPDATE billing.meter_reports SET window_start = window_start - interval '1 hour',"
        " identifier = identifier || '-earlier'",
    )
    await record(billing, usage_event("a2", tenant_id="ten_a"))
    await _round(billing)
    assert len(fake_stripe.sent("/v1/customers")) == 1
    assert [r.form["payload[stripe_customer_id]"] for r in fake_stripe.sent(METER_PATH)] == [
        fake_stripe.customer_of("ten_a")
    ] * 2


async def test_429_and_500_are_retried_with_the_same_identifier(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail(METER_PATH, 429, 500)
    await record(billing, usage_event("a1", tenant_id="ten_a"))
    result = await _round(billing)
    assert result.reports_sent == 1
    sent = fake_stripe.sent(METER_PATH)
    assert [r.status for r in sent] == [429, 500, 200]
    assert len({r.form["identifier"] for r in sent}) == 1
    assert len({r.idempotency_key for r in sent}) == 3  # each attempt a request of its own
    assert billing.metric("cic_billing_stripe_meter_events_total", {"result": "sent"}) == 1


async def test_stripe_down_leaves_the_report_pending_for_a_later_round(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail(METER_PATH, 503, 503, 503)
    await record(billing, usage_event("a1", tenant_id="ten_a"))
    result = await _round(billing)
    assert (result.reports_sent, result.reports_failed) == (0, 0)
    [report] = await _reports(billing)
    assert (report["state"], report["attempts"]) == ("pending", 1)
    assert len(fake_stripe.sent(METER_PATH)) == 3  # STRIPE_MAX_ATTEMPTS
    assert billing.metric("cic_billing_stripe_meter_events_total", {"result": "retry_later"}) == 1

    await _sql(billing, "UPDATE billing.meter_reports SET next_attempt_at = now()")
    result = await _round(billing)
    assert result.reports_sent == 1
    assert [r.status for r in fake_stripe.sent(METER_PATH)] == [503, 503, 503, 200]
    assert fake_stripe.total(fake_stripe.customer_of("ten_a")) == report["value_micro_usd"]


async def test_a_duplicate_refusal_counts_as_delivered(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await record(billing, usage_event("a1", tenant_id="ten_a"))
    await _round(billing)
    # As if billing had stopped after Stripe took the event but before it noted so.
    await _sql(billing, "UPDATE billing.meter_reports SET state = 'pending'")
    result = await _round(billing)
    assert result.reports_sent == 1
    sent = fake_stripe.sent(METER_PATH)
    assert [r.status for r in sent] == [200, 400]
    assert sent[0].form == sent[1].form
    [report] = await _reports(billing)
    assert report["state"] == "sent"
    assert len(fake_stripe.meter_events) == 1
    assert billing.metric("cic_billing_stripe_meter_events_total", {"result": "duplicate"}) == 1


async def test_a_refusal_marks_the_report_failed_and_reconcile_sends_it_again(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    fake_stripe.meter_event_name = "some_other_meter"  # Stripe has no meter for our events
    await record(billing, usage_event("a1", tenant_id="ten_a"))
    result = await _round(billing)
    assert (result.reports_sent, result.reports_failed) == (0, 1)
    [report] = await _reports(billing)
    assert report["state"] == "failed"
    assert [r.status for r in fake_stripe.sent(METER_PATH)] == [400]  # not retried

    fake_stripe.meter_event_name = "cic_usage_micro_usd"  # the operator creates the meter
    reply = await billing.stub.ReconcileStripe(billing_pb2.ReconcileStripeRequest())
    assert reply.reports_sent == 1
    [report] = await _reports(billing)
    assert report["state"] == "sent"


async def test_reconcile_resends_what_stripe_lost(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await record(
        billing,
        usage_event("a1", tenant_id="ten_a", prompt_tokens=1_000_000, completion_tokens=0),
        usage_event("b1", tenant_id="ten_b", prompt_tokens=2_000_000, completion_tokens=0),
    )
    await _round(billing)
    [lost, kept] = [r["identifier"] for r in await _reports(billing)]
    fake_stripe.lose(lost)
    # Unreported usage is claimed by the reconciliation itself.
    await record(
        billing, usage_event("c1", tenant_id="ten_c", prompt_tokens=0, completion_tokens=0)
    )

    reply = await billing.stub.ReconcileStripe(billing_pb2.ReconcileStripeRequest())
    by_tenant = {t.tenant_id: t for t in reply.tenants}
    a, b = by_tenant["ten_a"], by_tenant["ten_b"]
    assert (a.ledger_micro_usd, a.reported_micro_usd, a.stripe_micro_usd, a.reports_resent) == (
        100_000,
        100_000,
        0,
        1,
    )
    assert (b.ledger_micro_usd, b.reported_micro_usd, b.stripe_micro_usd, b.reports_resent) == (
        200_000,
        200_000,
        200_000,
        0,
    )
    c = by_tenant["ten_c"]  # zero cost: its report is 'empty', and it has no customer
    assert (c.ledger_micro_usd, c.reported_micro_usd, c.stripe_micro_usd, c.customer_id) == (
        0,
        0,
        -1,
        "",
    )
    assert reply.events_claimed == 1
    resent = [r for r in fake_stripe.sent(METER_PATH) if r.form["identifier"] == lost]
    assert [r.status for r in resent] == [200, 200]
    assert fake_stripe.total(fake_stripe.customer_of("ten_a")) == 100_000
    assert kept in fake_stripe.meter_events
    assert billing.metric("cic_billing_stripe_reconcile_shortfalls_total") == 1

    again = await billing.stub.ReconcileStripe(billing_pb2.ReconcileStripeRequest())
    assert [t.reports_resent for t in again.tenants] == [0, 0, 0]
    assert len(fake_stripe.sent("/v1/customers")) == 2


async def test_without_a_key_nothing_is_reported(database_url: str) -> None:
    async with running_billing(database_url) as billing:
        assert billing.service.reporter is None
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.ReconcileStripe(billing_pb2.ReconcileStripeRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "billing has no Stripe key"


async def test_one_call_at_a_time_per_customer_several_customers_at_once(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    for hour in (3, 2, 1):  # three reports per tenant, from earlier windows
        await record(
            billing,
            usage_event(f"a{hour}", tenant_id="ten_a"),
            usage_event(f"b{hour}", tenant_id="ten_b"),
        )
        await _round(billing)
        await _sql(
            billing,
            "UPDATE billing.meter_reports SET state = 'failed',"  # parked until all are made
            " window_start = window_start - make_interval(hours => $1),"
            " identifier = identifier || '-' || $1::text WHERE state = 'sent'",
            hour,
        )
    await _sql(billing, "UPDATE billing.meter_reports SET state = 'pending'")
    fake_stripe.meter_events.clear()
    fake_stripe.requests.clear()
    fake_stripe.latency_s = 0.2  # longer than the pacing interval (test keys: 20 calls/s)

    result = await _round(billing)
    assert result.reports_sent == 6
    assert fake_stripe.max_in_flight_per_customer == 1
    assert fake_stripe.max_in_flight == 2
    sent = [r.form["identifier"] for r in fake_stripe.sent(METER_PATH)]
    for tenant in ("ten_a", "ten_b"):
        mine = [i for i in sent if i.startswith(f"cic-{tenant}-")]
        assert [i.rsplit("-", 1)[1] for i in mine] == ["3", "2", "1"]  # oldest first
