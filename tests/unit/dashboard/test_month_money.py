"""The usage page's "This month" section against the real billing service and Stripe's fake: the
month's spend, the credit balance, the budget, a spent budget, and the invoices from Stripe
(escaped, with a link only to an https:// page)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.support.fake_stripe import FakeStripe
from tests.unit.billing.budget_support import costing, grant
from tests.unit.billing.support import (
    RunningBilling,
    record,
    running_billing,
    stripe_billing_env,
)
from tests.unit.dashboard.conftest import Browser

USAGE = "/dashboard/usage"


@pytest.fixture
async def billing(
    database_url: str, redis_url: str, redis_prefix: str, fake_stripe: FakeStripe
) -> AsyncIterator[RunningBilling]:
    env = stripe_billing_env(redis_url, redis_prefix, fake_stripe)
    async with running_billing(database_url, **env) as running:
        yield running


async def _tenant_id(browser: Browser) -> str:
    found = re.search(
        r"<code>(ten_[0-9a-f]+)</code>", (await browser.get("/dashboard/account")).text
    )
    assert found
    return found.group(1)


async def test_spend_credit_budget_and_invoices_are_shown(
    start_dashboard: Any, billing: RunningBilling, fake_stripe: FakeStripe
) -> None:
    dashboard = await start_dashboard(BILLING_ADDR=billing.address)
    browser, _ = await dashboard.sign_in()
    tenant_id = await _tenant_id(browser)

    page = await browser.get(USAGE)
    assert page.status == 200
    assert 'id="month-spend">$0.00<' in page.text
    assert 'id="no-invoices"' in page.text
    assert 'id="monthly-budget"' not in page.text and 'id="budget-blocked"' not in page.text

    await grant(billing, 2_000_000, tenant_id=tenant_id)
    await billing.stub.SetBudget(
        billing_pb2.SetBudgetRequest(
            scope=billing_pb2.BudgetScope(tenant_id=tenant_id), monthly_limit_micro_usd=30_000
        )
    )
    await record(billing, costing("req-dash-1", 30_000, tenant_id))
    assert billing.service.reporter is not None
    customer = await billing.service.reporter.customer(tenant_id)
    paid = fake_stripe.add_invoice(customer, 4_250, 4_250)
    hostile = fake_stripe.add_invoice(customer, 100, 0, status="open")
    hostile["number"] = "<script>alert(1)</script>"
    hostile["hosted_invoice_url"] = "javascript:alert(1)"

    page = await browser.get(USAGE)
    assert page.status == 200
    assert 'id="month-spend">$0.0300<' in page.text
    assert 'id="credit-balance">$1.97<' in page.text
    assert 'id="monthly-budget">$0.0300<' in page.text
    assert 'id="budget-blocked"' in page.text and "budget is spent" in page.text
    assert f'<a href="{paid["hosted_invoice_url"]}" rel="noopener noreferrer">' in page.text
    assert f">{paid['number']}</a>" in page.text and "$42.50" in page.text
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "javascript:" not in page.text


async def test_billing_refusing_the_spend_leaves_the_rest_of_the_page(
    start_dashboard: Any,
) -> None:
    dashboard = await start_dashboard()
    browser, _ = await dashboard.sign_in()
    page = await browser.get(USAGE)
    assert (page.status, 'id="invoices-unavailable"' in page.text) == (200, True)
    dashboard.gateway.services.billing.spend_error = (grpc.StatusCode.UNAVAILABLE, "down")
    page = await browser.get(USAGE)
    assert page.status == 200
    assert 'id="spend-unavailable"' in page.text and 'id="total-requests"' in page.text
