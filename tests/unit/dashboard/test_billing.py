"""The usage page's billing card: the Stripe billing state from billing's GetBillingAccount, and
the "Manage billing" form that opens a Stripe customer-portal session for the session's tenant
(CreatePortalSession) and redirects there; billing down or Stripe off handled in HTML."""

from __future__ import annotations

import re

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from tests.unit.dashboard.conftest import PUBLIC_URL, Browser, Dashboard, csrf_of

PORTAL = "/dashboard/billing/portal"
FORM = f'action="{PORTAL}"'
FAILED_AT = 1_767_000_000  # 29 Dec 2025 09:20 UTC
PAID_AT = 1_767_003_600  # 29 Dec 2025 10:20 UTC


async def _tenant_id(browser: Browser) -> str:
    found = re.search(
        r"<code>(ten_[0-9a-f]+)</code>", (await browser.get("/dashboard/account")).text
    )
    assert found
    return found.group(1)


def _account(
    status: billing_pb2.BillingStatus.ValueType = billing_pb2.BILLING_STATUS_UNSPECIFIED,
    event: str = "",
    changed: int = 0,
    failed: int = 0,
    customer: str = "cus_1",
) -> billing_pb2.BillingAccount:
    account = billing_pb2.BillingAccount(
        stripe_enabled=True, customer_id=customer, status=status, status_event_type=event
    )
    if changed:
        account.status_changed_at.CopyFrom(Timestamp(seconds=changed))
    if failed:
        account.last_payment_failed_at.CopyFrom(Timestamp(seconds=failed))
    return account


async def test_the_billing_state_from_billing_is_shown(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    tenant_id = await _tenant_id(browser)
    billing = dashboard.gateway.services.billing
    cases = [
        (
            _account(
                billing_pb2.BILLING_STATUS_PAST_DUE, "invoice.payment_failed", FAILED_AT, FAILED_AT
            ),
            [
                'id="billing-status">Payment failed<',
                "since 29 Dec 2025 09:20 UTC",
                "<code>invoice.payment_failed</code>",
                'id="last-payment-failure"',
            ],
        ),
        (
            _account(billing_pb2.BILLING_STATUS_ACTIVE, "invoice.paid", PAID_AT, FAILED_AT),
            [
                'id="billing-status">Paid<',
                "since 29 Dec 2025 10:20 UTC",
                "<code>invoice.paid</code>",
                "Last failed payment</span> 29 Dec 2025 09:20 UTC",
            ],
        ),
        (
            _account(billing_pb2.BILLING_STATUS_CANCELED, "customer.subscription.deleted", PAID_AT),
            ['class="pill pill-canceled" id="billing-status">Subscription canceled<'],
        ),
        (_account(), ['id="billing-status">Invoices and payment methods are kept by Stripe.<']),
        (_account(customer=""), ['id="billing-status">No invoices yet.<']),
    ]
    for reply, expected in cases:
        billing.account_reply = reply
        billing.account_queries.clear()
        page = await browser.get("/dashboard/usage")
        assert page.status == 200, page.text
        assert [q.tenant_id for q in billing.account_queries] == [tenant_id]
        for text in expected:
            assert text in page.text, (text, reply)
        assert ("last-payment-failure" in page.text) == reply.HasField("last_payment_failed_at")
        assert FORM in page.text and "Manage billing" in page.text
        assert "billing details are unavailable" not in page.text.lower()


async def test_manage_billing_redirects_to_a_portal_session_of_the_sessions_tenant(
    dashboard: Dashboard,
) -> None:
    browser, _ = await dashboard.sign_in()
    tenant_id = await _tenant_id(browser)
    billing = dashboard.gateway.services.billing
    billing.account_reply = _account()
    page = await browser.get("/dashboard/usage")
    assert "https://billing.stripe.com" in page.headers["Content-Security-Policy"]
    sent = await browser.post(PORTAL, {"csrf_token": csrf_of(page.text), "tenant_id": "ten_other"})
    assert sent.status == 303, sent.text
    assert sent.location == f"https://billing.stripe.com/p/session/test_fake_{tenant_id}"
    assert sent.headers["Cache-Control"] == "no-store"
    assert [(r.tenant_id, r.return_url) for r in billing.portal_requests] == [
        (tenant_id, f"{PUBLIC_URL}/dashboard/usage")
    ]


async def test_the_portal_form_needs_its_csrf_token(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    billing = dashboard.gateway.services.billing
    billing.account_reply = _account()
    for fields in ({}, {"csrf_token": "forged"}, {"csrf_token": browser.cookie("cic_csrf") or "x"}):
        page = await browser.post(PORTAL, fields)
        assert page.status == 403 and "This form has expired" in page.text, fields
    assert billing.portal_requests == []
    signed_out = await dashboard.browser().post(PORTAL, {"csrf_token": "x"})
    assert signed_out.status == 303 and signed_out.location == "/dashboard/sign-in"
    assert billing.portal_requests == []


async def test_without_stripe_there_is_no_form_and_the_portal_is_refused_clearly(
    dashboard: Dashboard,
) -> None:
    browser, _ = await dashboard.sign_in()
    billing = dashboard.gateway.services.billing  # Stripe off by default
    page = await browser.get("/dashboard/usage")
    assert "Stripe is not set up here" in page.text and FORM not in page.text
    refused = await browser.post(PORTAL, {"csrf_token": csrf_of(page.text)})
    assert refused.status == 409 and "The billing portal is not available" in refused.text
    assert refused.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in refused.text and "Stripe key" not in refused.text
    assert len(billing.portal_requests) == 1


async def test_when_billing_cannot_say_the_page_still_renders(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    billing = dashboard.gateway.services.billing
    billing.account_reply = _account()
    billing.account_error = (grpc.StatusCode.UNAVAILABLE, "billing's database is unavailable")
    page = await browser.get("/dashboard/usage")
    assert page.status == 200  # the usage figures came
    assert (
        'id="billing-unavailable"' in page.text and "Billing details are unavailable" in page.text
    )
    assert 'id="total-requests"' in page.text and FORM not in page.text

    billing.account_error = None
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ):
        billing.portal_error = (code, "Stripe cannot be reached; retry")
        page = await browser.get("/dashboard/usage")
        down = await browser.post(PORTAL, {"csrf_token": csrf_of(page.text)})
        assert down.status == 503 and "The dashboard is unavailable" in down.text, code
        assert (
            down.headers["Content-Type"].startswith("text/html") and "Location" not in down.headers
        )


async def test_a_portal_url_that_is_not_http_is_not_followed(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    billing = dashboard.gateway.services.billing
    billing.account_reply = _account()
    billing.portal_url = "javascript:alert(1)//"
    page = await browser.get("/dashboard/usage")
    answer = await browser.post(PORTAL, {"csrf_token": csrf_of(page.text)})
    assert answer.status == 503 and "Location" not in answer.headers


async def test_with_billing_down_the_page_says_so_and_the_portal_is_a_503_page(
    start_dashboard,
) -> None:
    dashboard: Dashboard = await start_dashboard(BILLING_ADDR="127.0.0.1:1")
    browser, _ = await dashboard.sign_in()
    page = await browser.get("/dashboard/usage")
    assert page.status == 503
    assert "Billing details are unavailable" in page.text and "unavailable right now" in page.text
    assert 'id="tenant-status">active<' in page.text and FORM not in page.text
    down = await browser.post(PORTAL, {"csrf_token": csrf_of(page.text)})
    assert down.status == 503 and "The dashboard is unavailable" in down.text
    assert down.headers["Content-Type"].startswith("text/html")
    assert down.headers["Retry-After"] == "30" and "Traceback" not in down.text
