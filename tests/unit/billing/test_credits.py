"""Prepaid credits through the real gRPC server and Postgres: draws oldest-expiring first, exact to
the micro-dollar and shown per request; concurrent ingestion on two servicers never over-draws;
what Stripe is sent is the cost minus the credit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.support.fake_stripe import FakeStripe
from tests.unit.billing.budget_support import TENANT, costing, grant
from tests.unit.billing.support import RunningBilling, record, running_billing, timestamp


async def _fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_draws_go_oldest_expiring_first_and_skip_expired_grants(
    billing: RunningBilling,
) -> None:
    later = await grant(billing, 25_000, timedelta(days=10))
    never = await grant(billing, 100_000, kind="purchased")
    sooner = await grant(billing, 20_000, timedelta(days=5), kind="sign_up")
    # An expired grant with money left (the RPC refuses a past expiry, so it is written here).
    await _fetch(
        billing.database_url,
        "INSERT INTO billing.credit_grants (id, tenant_id, kind, amount_micro_usd,"
        " remaining_micro_usd, expires_at) VALUES ('cr_expired', $1, 'promotional', 50000, 50000,"
        " now() - interval '1 day')",
        TENANT,
    )

    reply = await record(billing, costing("req-1", 30_000), costing("req-2", 30_000))
    assert reply.recorded == 2

    draws = await billing.stub.ListCreditDraws(billing_pb2.ListCreditDrawsRequest(tenant_id=TENANT))
    drawn = sorted((d.request_id, d.grant_id, d.amount_micro_usd) for d in draws.draws)
    assert drawn == sorted(
        [
            ("req-1", sooner.id, 20_000),
            ("req-1", later.id, 10_000),
            ("req-2", later.id, 15_000),
            ("req-2", never.id, 15_000),
        ]
    )
    one = await billing.stub.ListCreditDraws(
        billing_pb2.ListCreditDrawsRequest(tenant_id=TENANT, request_id="req-1")
    )
    assert {(d.grant_id, d.amount_micro_usd, d.cost_micro_usd) for d in one.draws} == {
        (sooner.id, 20_000, 30_000),
        (later.id, 10_000, 30_000),
    }

    listed = await billing.stub.ListCreditGrants(
        billing_pb2.ListCreditGrantsRequest(tenant_id=TENANT)
    )
    remaining = {g.id: g.remaining_micro_usd for g in listed.grants}
    assert remaining == {sooner.id: 0, later.id: 0, never.id: 85_000, "cr_expired": 50_000}
    assert listed.balance_micro_usd == 85_000  # the expired grant's money is not spendable

    rows = await _fetch(
        billing.database_url,
        "SELECT request_id, cost_micro_usd, credit_micro_usd FROM billing.usage_events"
        " ORDER BY request_id",
    )
    assert [tuple(r) for r in rows] == [("req-1", 30_000, 30_000), ("req-2", 30_000, 30_000)]

    # A duplicate draws nothing; a request bigger than the balance draws what is left.
    await record(billing, costing("req-1", 30_000), costing("req-3", 90_000))
    rows = await _fetch(
        billing.database_url,
        "SELECT credit_micro_usd FROM billing.usage_events WHERE request_id = 'req-3'",
    )
    assert rows[0]["credit_micro_usd"] == 85_000
    listed = await billing.stub.ListCreditGrants(
        billing_pb2.ListCreditGrantsRequest(tenant_id=TENANT)
    )
    assert listed.balance_micro_usd == 0


async def test_bad_grants_are_refused(billing: RunningBilling) -> None:
    bad = [
        billing_pb2.CreateCreditGrantRequest(tenant_id=TENANT, kind="gift", amount_micro_usd=1),
        billing_pb2.CreateCreditGrantRequest(tenant_id=TENANT, kind="purchased"),
        billing_pb2.CreateCreditGrantRequest(kind="purchased", amount_micro_usd=1),
        billing_pb2.CreateCreditGrantRequest(
            tenant_id=TENANT,
            kind="purchased",
            amount_micro_usd=1,
            expires_at=timestamp(datetime.now(UTC) - timedelta(seconds=1)),
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.CreateCreditGrant(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_two_servicers_ingesting_at_once_never_overdraw(database_url: str) -> None:
    async with (
        running_billing(database_url) as first,
        running_billing(database_url) as second,
    ):
        only = await grant(first, 100_000)
        events = [costing(f"req-{i:02d}", 7_000) for i in range(40)]  # 280,000 in all
        # Four batches at once, two on each replica, each batch repeating one of another's.
        batches = [[*events[i::4], events[(i + 1) % 4]] for i in range(4)]
        replies = await asyncio.gather(
            *(
                record(billing, *batch)
                for billing, batch in zip([first, second] * 2, batches, strict=True)
            )
        )
        assert sum(r.recorded for r in replies) == 40  # each event once, whoever got it first

        rows = await _fetch(
            database_url,
            "SELECT (SELECT sum(amount_micro_usd) FROM billing.credit_draws) AS drawn,"
            " (SELECT sum(credit_micro_usd) FROM billing.usage_events) AS covered,"
            " (SELECT remaining_micro_usd FROM billing.credit_grants WHERE id = $1) AS left",
            only.id,
        )
        assert tuple(rows[0]) == (100_000, 100_000, 0)


async def test_stripe_is_sent_the_cost_minus_the_credit_and_lists_invoices(
    database_url: str, fake_stripe: FakeStripe
) -> None:
    env = {
        "STRIPE_API_KEY": "sk_test_fake",
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_REPORT_INTERVAL_S": "86400",
        "STRIPE_RECONCILE_INTERVAL_S": "0",
    }
    async with running_billing(database_url, **env) as billing:
        none_yet = await billing.stub.ListInvoices(
            billing_pb2.ListInvoicesRequest(tenant_id=TENANT)
        )
        assert (none_yet.available, list(none_yet.invoices)) == (True, [])

        await grant(billing, 12_345)
        await record(billing, costing("req-1", 10_000), costing("req-2", 7_000))
        assert billing.service.reporter is not None
        await billing.service.reporter.run_round()
        customer = fake_stripe.customer_of(TENANT)
        assert fake_stripe.total(customer) == 17_000 - 12_345

        older = fake_stripe.add_invoice(customer, 1_234, 1_234)
        newer = fake_stripe.add_invoice(customer, 466, 0, status="open")
        listed = await billing.stub.ListInvoices(billing_pb2.ListInvoicesRequest(tenant_id=TENANT))
        assert listed.available
        assert [(i.id, i.number, i.status, i.amount_due_cents, i.amount_paid_cents) for i in
                listed.invoices] == [
            (newer["id"], newer["number"], "open", 466, 0),
            (older["id"], older["number"], "paid", 1_234, 1_234),
        ]  # fmt: skip
        assert listed.invoices[0].hosted_invoice_url == newer["hosted_invoice_url"]

        fake_stripe.fail("/v1/invoices", 400)
        refused = await billing.stub.ListInvoices(billing_pb2.ListInvoicesRequest(tenant_id=TENANT))
        assert (refused.available, list(refused.invoices)) == (False, [])


async def test_without_stripe_invoices_are_unavailable(billing: RunningBilling) -> None:
    reply = await billing.stub.ListInvoices(billing_pb2.ListInvoicesRequest(tenant_id=TENANT))
    assert (reply.available, list(reply.invoices)) == (False, [])
