"""GetBillingAccount and CreatePortalSession through the real billing service, with the real
``stripe`` SDK against the local fake of Stripe's API: the state the webhooks left, the exact
requests Stripe receives for a portal session (the customer created first when there is none),
retries, refusals, an unreachable Stripe, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.support.fake_stripe import FakeStripe, event_body, signature_header
from tests.support.net import free_port
from tests.unit.billing.support import RunningBilling, running_billing

SECRET = "whsec_test_secret"
PORTAL_PATH = "/v1/billing_portal/sessions"
RETURN_URL = "https://dashboard.example.com/dashboard/usage"
STRIPE_ENV = {
    "STRIPE_API_KEY": "sk_test_fake",
    "STRIPE_WEBHOOK_SECRET": SECRET,
    "STRIPE_REPORT_INTERVAL_S": "86400",  # no report round runs during a test
    "STRIPE_RECONCILE_INTERVAL_S": "0",
    "STRIPE_RETRY_INITIAL_S": "0.01",
    "STRIPE_RETRY_MAX_S": "0.02",
    "STRIPE_MAX_ATTEMPTS": "3",
}


@pytest.fixture
async def billing(database_url: str, fake_stripe: FakeStripe) -> AsyncIterator[RunningBilling]:
    env = {**STRIPE_ENV, "STRIPE_API_BASE": fake_stripe.url}
    async with running_billing(database_url, **env) as running:
        yield running


async def _account(billing: RunningBilling, tenant_id: str) -> billing_pb2.BillingAccount:
    return await billing.stub.GetBillingAccount(
        billing_pb2.GetBillingAccountRequest(tenant_id=tenant_id)
    )


async def _portal(
    billing: RunningBilling, tenant_id: str, return_url: str = RETURN_URL
) -> billing_pb2.CreatePortalSessionResponse:
    return await billing.stub.CreatePortalSession(
        billing_pb2.CreatePortalSessionRequest(tenant_id=tenant_id, return_url=return_url)
    )


async def _deliver(
    billing: RunningBilling, event_id: str, kind: str, customer: str, at: int
) -> None:
    body = event_body(event_id, kind, customer, created=at)
    await billing.stub.HandleStripeWebhook(
        billing_pb2.StripeWebhookRequest(payload=body, signature=signature_header(body, SECRET))
    )


async def _stored_customers(billing: RunningBilling) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(billing.database_url)
    try:
        rows = await conn.fetch("SELECT tenant_id, customer_id FROM billing.stripe_customers")
    finally:
        await conn.close()
    return sorted((r["tenant_id"], r["customer_id"]) for r in rows)


def _when(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined, no-any-return]


async def test_a_new_tenant_has_an_empty_account(billing: RunningBilling) -> None:
    account = await _account(billing, "ten_new")
    assert account.tenant_id == "ten_new" and account.stripe_enabled
    assert account.customer_id == "" and account.status_event_type == ""
    assert account.status == billing_pb2.BILLING_STATUS_UNSPECIFIED
    assert not account.HasField("status_changed_at")
    assert not account.HasField("last_payment_failed_at")


async def test_the_account_follows_the_webhooks(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await _portal(billing, "ten_acme")  # makes the tenant's customer
    customer = fake_stripe.customer_of("ten_acme")
    assert (await _account(billing, "ten_acme")).customer_id == customer

    failed_at, paid_at, gone_at = 1_767_000_000, 1_767_000_600, 1_767_001_200
    await _deliver(billing, "evt_fail", "invoice.payment_failed", customer, failed_at)
    account = await _account(billing, "ten_acme")
    assert account.status == billing_pb2.BILLING_STATUS_PAST_DUE
    assert account.status_event_type == "invoice.payment_failed"
    assert account.status_changed_at.seconds == failed_at
    assert account.last_payment_failed_at.seconds == failed_at

    await _deliver(billing, "evt_paid", "invoice.paid", customer, paid_at)
    account = await _account(billing, "ten_acme")
    assert (account.status, account.status_event_type) == (
        billing_pb2.BILLING_STATUS_ACTIVE,
        "invoice.paid",
    )
    assert account.status_changed_at.seconds == paid_at
    assert account.last_payment_failed_at.seconds == failed_at  # the failure is remembered

    # An older failure delivered late changes neither the status nor the newest failure.
    await _deliver(billing, "evt_old", "invoice.payment_failed", customer, failed_at - 60)
    account = await _account(billing, "ten_acme")
    assert account.status == billing_pb2.BILLING_STATUS_ACTIVE
    assert account.last_payment_failed_at.seconds == failed_at

    await _deliver(billing, "evt_gone", "customer.subscription.deleted", customer, gone_at)
    account = await _account(billing, "ten_acme")
    assert account.status == billing_pb2.BILLING_STATUS_CANCELED
    assert account.status_event_type == "customer.subscription.deleted"
    assert _when(account.status_changed_at) == datetime.fromtimestamp(gone_at, UTC)

    # Another tenant sees nothing of this.
    other = await _account(billing, "ten_other")
    assert other.customer_id == "" and other.status == billing_pb2.BILLING_STATUS_UNSPECIFIED


async def test_a_portal_session_creates_the_customer_once_then_opens_the_portal(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    first = await _portal(billing, "ten_acme")
    customer = fake_stripe.customer_of("ten_acme")
    assert first.customer_id == customer
    assert first.url == fake_stripe.portal_sessions[0]["url"]
    assert first.url.startswith("https://billing.stripe.com/p/session/")
    assert [(r.method, r.path, r.form, r.status) for r in fake_stripe.requests] == [
        (
            "POST",
            "/v1/customers",
            {"description": "CIC tenant ten_acme", "metadata[cic_tenant_id]": "ten_acme"},
            200,
        ),
        ("POST", PORTAL_PATH, {"customer": customer, "return_url": RETURN_URL}, 200),
    ]
    assert fake_stripe.requests[0].idempotency_key == "cic-customer-ten_acme"
    assert await _stored_customers(billing) == [("ten_acme", customer)]

    # The next session reuses the stored customer: no second customer creation.
    second = await _portal(billing, "ten_acme", "http://localhost:8080/dashboard/usage")
    assert second.customer_id == customer and second.url != first.url
    assert [
        (r.path, r.form.get("customer"), r.form.get("return_url")) for r in fake_stripe.requests[2:]
    ] == [(PORTAL_PATH, customer, "http://localhost:8080/dashboard/usage")]
    assert billing.metric("cic_billing_stripe_portal_sessions_total", {"result": "created"}) == 2


async def test_a_customer_made_for_meter_events_is_reused(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    reporter = billing.service.reporter
    assert reporter is not None
    made = await reporter.customer("ten_acme")  # as the meter reporter makes it
    reply = await _portal(billing, "ten_acme")
    assert reply.customer_id == made
    assert [r.path for r in fake_stripe.requests] == ["/v1/customers", PORTAL_PATH]


async def test_429_and_5xx_are_retried(billing: RunningBilling, fake_stripe: FakeStripe) -> None:
    fake_stripe.fail("/v1/customers", 500)
    fake_stripe.fail(PORTAL_PATH, 429, 503)
    reply = await _portal(billing, "ten_acme")
    assert reply.url == fake_stripe.portal_sessions[0]["url"]
    assert [(r.path, r.status) for r in fake_stripe.requests] == [
        ("/v1/customers", 500),
        ("/v1/customers", 200),
        (PORTAL_PATH, 429),
        (PORTAL_PATH, 503),
        (PORTAL_PATH, 200),
    ]
    assert len(fake_stripe.customers) == 1


async def test_stripe_failing_on_every_attempt_is_unavailable(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await _portal(billing, "ten_acme")
    fake_stripe.requests.clear()
    fake_stripe.fail(PORTAL_PATH, 500, 502, 503)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _portal(billing, "ten_acme")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Stripe cannot be reached" in (caught.value.details() or "")
    assert [(r.path, r.status) for r in fake_stripe.requests] == [
        (PORTAL_PATH, s) for s in (500, 502, 503)
    ]
    assert (
        billing.metric("cic_billing_stripe_portal_sessions_total", {"result": "unavailable"}) == 1
    )
    # Stripe back: the next call works.
    assert (await _portal(billing, "ten_acme")).url.startswith("https://billing.stripe.com/")


async def test_a_refusal_from_stripe_is_a_failed_precondition(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    fake_stripe.portal_configured = False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _portal(billing, "ten_acme")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "default configuration has not been created" in (caught.value.details() or "")
    # Refused once, not retried: retrying the same request cannot help.
    assert [(r.path, r.status) for r in fake_stripe.requests] == [
        ("/v1/customers", 200),
        (PORTAL_PATH, 400),
    ]


async def test_unreachable_stripe_is_unavailable(database_url: str) -> None:
    env = {**STRIPE_ENV, "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}"}
    async with running_billing(database_url, **env) as billing:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _portal(billing, "ten_acme")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await _stored_customers(billing) == []
        # The account is still read from billing's own tables.
        assert (await _account(billing, "ten_acme")).stripe_enabled


async def test_without_a_stripe_key_there_is_no_portal(database_url: str) -> None:
    async with running_billing(database_url) as billing:
        account = await _account(billing, "ten_acme")
        assert not account.stripe_enabled and account.customer_id == ""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _portal(billing, "ten_acme")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == "billing has no Stripe key"


@pytest.mark.parametrize(
    ("tenant_id", "message"),
    [
        ("", "tenant_id is empty"),
        ("t" * 201, "tenant_id is longer than 200 characters"),
        ("ten\x00a", "tenant_id contains a control character"),
        ("ten\na", "tenant_id contains a control character"),
    ],
)
async def test_bad_tenant_ids_are_refused(
    billing: RunningBilling, fake_stripe: FakeStripe, tenant_id: str, message: str
) -> None:
    for call in (_account, _portal):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(billing, tenant_id)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == message
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    ("return_url", "message"),
    [
        ("", "return_url is empty"),
        ("/dashboard/usage", "return_url must be an absolute http:// or https:// URL"),
        ("javascript:alert(1)", "return_url must be an absolute http:// or https:// URL"),
        ("ftp://example.com/x", "return_url must be an absolute http:// or https:// URL"),
        ("https://", "return_url must be an absolute http:// or https:// URL"),
        ("https://[::1/x", "return_url is not a URL"),
        ("https://example.com/a b", "return_url contains a space or a control character"),
        (
            "https://example.com/\r\nSet-Cookie: x",
            "return_url contains a space or a control character",
        ),
        ("https://example.com/" + "x" * 2000, "return_url is longer than 2000 characters"),
    ],
)
async def test_bad_return_urls_are_refused(
    billing: RunningBilling, fake_stripe: FakeStripe, return_url: str, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _portal(billing, "ten_acme", return_url)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert fake_stripe.requests == []


async def test_a_refused_key_is_named_without_stripes_message(
    billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    await _portal(billing, "ten_acme")
    fake_stripe.requests.clear()
    fake_stripe.fail(PORTAL_PATH, 401)  # Stripe's own message would echo part of the key
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _portal(billing, "ten_acme")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "Stripe refused the session: AuthenticationError (HTTP 401)"
    assert [(r.path, r.status) for r in fake_stripe.requests] == [(PORTAL_PATH, 401)]
    assert billing.metric("cic_billing_stripe_portal_sessions_total", {"result": "refused"}) == 1
