"""HandleStripeWebhook: verification with the SDK (signature, 300 s either way), each event id
processed once, dispatch by type, and the tenant status the gateway applies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.support.fake_stripe import event_body, signature_header
from tests.unit.billing.support import RunningBilling, running_billing

SECRET = "whsec_test_secret"
CUSTOMER = "cus_acme"
TENANT = "ten_acme"


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[RunningBilling]:
    async with running_billing(database_url, STRIPE_WEBHOOK_SECRET=SECRET) as running:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO billing.stripe_customers (tenant_id, customer_id) VALUES ($1, $2)",
                TENANT,
                CUSTOMER,
            )
        finally:
            await conn.close()
        yield running


async def deliver(
    billing: RunningBilling, body: bytes, signature: str | None = None
) -> billing_pb2.StripeWebhookResponse:
    request = billing_pb2.StripeWebhookRequest(
        payload=body, signature=signature_header(body, SECRET) if signature is None else signature
    )
    return await billing.stub.HandleStripeWebhook(request)


async def confirm(billing: RunningBilling, event_id: str) -> None:
    await billing.stub.ConfirmStripeEvent(billing_pb2.ConfirmStripeEventRequest(event_id=event_id))


async def stored_events(billing: RunningBilling) -> list[tuple[str, str, bool]]:
    conn = await asyncpg.connect(billing.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, tenant_status, applied_at IS NOT NULL AS applied"
            " FROM billing.stripe_events ORDER BY received_at"
        )
    finally:
        await conn.close()
    return [(r["id"], r["tenant_status"], r["applied"]) for r in rows]


def _answer(reply: billing_pb2.StripeWebhookResponse) -> tuple[str, str, bool, str, str]:
    return (reply.event_id, reply.event_type, reply.duplicate, reply.tenant_id, reply.tenant_status)


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("invoice.payment_failed", "suspended"),
        ("customer.subscription.deleted", "suspended"),
        ("invoice.paid", "active"),
    ],
)
async def test_dispatch_by_type(billing: RunningBilling, event_type: str, status: str) -> None:
    reply = await deliver(billing, event_body("evt_1", event_type, CUSTOMER))
    assert _answer(reply) == ("evt_1", event_type, False, TENANT, status)


async def test_an_event_is_processed_once(billing: RunningBilling) -> None:
    body = event_body("evt_1", "invoice.payment_failed", CUSTOMER)
    first = await deliver(billing, body)
    assert _answer(first) == ("evt_1", "invoice.payment_failed", False, TENANT, "suspended")
    # Redelivered before the gateway confirmed it applied the status: the same answer again.
    assert _answer(await deliver(billing, body)) == _answer(first)
    await confirm(billing, "evt_1")
    for _ in range(2):
        again = await deliver(billing, body)
        assert _answer(again) == ("evt_1", "invoice.payment_failed", True, "", "")
    assert await stored_events(billing) == [("evt_1", "suspended", True)]
    assert billing.metric("cic_billing_stripe_webhook_events_total", {"result": "duplicate"}) == 2


async def test_other_types_are_stored_and_acknowledged(billing: RunningBilling) -> None:
    reply = await deliver(billing, event_body("evt_2", "customer.created", CUSTOMER))
    assert _answer(reply) == ("evt_2", "customer.created", False, "", "")
    assert await stored_events(billing) == [("evt_2", "", True)]
    assert (await deliver(billing, event_body("evt_2", "customer.created", CUSTOMER))).duplicate


async def test_an_unknown_customer_changes_no_tenant(billing: RunningBilling) -> None:
    reply = await deliver(billing, event_body("evt_3", "invoice.payment_failed", "cus_other"))
    assert _answer(reply) == ("evt_3", "invoice.payment_failed", False, "", "")


async def test_an_older_event_delivered_late_changes_nothing(billing: RunningBilling) -> None:
    now = int(time.time())
    paid = await deliver(billing, event_body("evt_new", "invoice.paid", CUSTOMER, created=now))
    assert paid.tenant_status == "active"
    await confirm(billing, "evt_new")
    late = await deliver(
        billing, event_body("evt_old", "invoice.payment_failed", CUSTOMER, created=now - 60)
    )
    assert _answer(late) == ("evt_old", "invoice.payment_failed", False, "", "")


async def test_a_superseded_unconfirmed_event_is_not_answered_again(
    billing: RunningBilling,
) -> None:
    now = int(time.time())
    failed = event_body("evt_a", "invoice.payment_failed", CUSTOMER, created=now - 10)
    assert (await deliver(billing, failed)).tenant_status == "suspended"
    assert (await deliver(billing, event_body("evt_b", "invoice.paid", CUSTOMER))).tenant_status
    # evt_a was never confirmed, but evt_b decided since: its redelivery must not re-suspend.
    assert (await deliver(billing, failed)).duplicate


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        ("", "signature not verified"),
        ("t=123", "signature not verified"),
        ("garbage", "signature not verified"),
        (signature_header(b"another body", SECRET), "signature not verified"),
        (signature_header(b"{}", "whsec_wrong"), "signature not verified"),
    ],
    # Fixed ids: the signed ones carry the time, and every xdist worker must collect the same.
    ids=["empty", "no-signature", "garbage", "other-body", "wrong-secret"],
)
async def test_a_bad_signature_is_refused_and_stores_nothing(
    billing: RunningBilling, signature: str, problem: str
) -> None:
    body = event_body("evt_9", "invoice.payment_failed", CUSTOMER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deliver(billing, body, signature)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (err.value.details() or "")
    assert await stored_events(billing) == []


# 10 s past the 300 s tolerance either way: a slow machine cannot carry the signed time back in.
@pytest.mark.parametrize(("offset", "problem"), [(-310, "tolerance"), (310, "in the future")])
async def test_stale_or_future_timestamps_are_refused(
    billing: RunningBilling, offset: int, problem: str
) -> None:
    body = event_body("evt_9", "invoice.payment_failed", CUSTOMER)
    signature = signature_header(body, SECRET, int(time.time()) + offset)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deliver(billing, body, signature)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (err.value.details() or "")
    assert await stored_events(billing) == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"type": "invoice.paid"}', b"\xff\xfe", b'{"id": "evt_1"}'],
)
async def test_signed_bodies_that_are_not_events_are_refused(
    billing: RunningBilling, body: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deliver(billing, body)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await stored_events(billing) == []


async def test_without_a_secret_webhooks_are_refused(database_url: str) -> None:
    async with running_billing(database_url) as billing:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await deliver(billing, event_body("evt_1", "invoice.paid", CUSTOMER))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_confirming_an_unknown_event_is_not_found(billing: RunningBilling) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await confirm(billing, "evt_nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
