"""The dashboard's usage page and the tenant's GET /v1/usage show the same figures: both read
billing's GetUsage (the real service here, on Postgres) for the same tenant and range."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.billing.support import RunningBilling, record, running_billing, usage_event


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[RunningBilling]:
    async with running_billing(database_url) as running:
        yield running


async def test_the_usage_page_and_the_usage_api_agree(
    start_dashboard: Any, billing: RunningBilling
) -> None:
    dashboard = await start_dashboard(BILLING_ADDR=billing.address)
    gateway = dashboard.gateway
    browser, email = await dashboard.sign_in()
    _, tenants = await gateway.admin("GET", "/admin/tenants")
    [tenant] = [t for t in tenants["data"] if t["email"] == email]
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant['id']}/keys", {"name": "reader", "role": "read-only"}
    )
    assert status == 201, key

    now = datetime.now(UTC)
    await record(
        billing,
        *(
            usage_event(f"r{i}", tenant_id=tenant["id"], finished_at=now - timedelta(minutes=i),
                        prompt_tokens=1_000_000 * i, completion_tokens=3_000_000)
            for i in range(1, 4)
        ),
        usage_event("other", tenant_id="ten_someone_else", finished_at=now),
    )  # fmt: skip

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=6), today + timedelta(days=1)
    query = f"?start={start.isoformat().replace('+00:00', 'Z')}&end={end.isoformat()[:19]}"
    async with gateway.session.get(
        f"{gateway.url}/v1/usage{query}", headers={"Authorization": f"Bearer {key['key']}"}
    ) as resp:
        assert resp.status == 200
        api = await resp.json()
    # cic-sim-small: $0.10 and $0.20 per million tokens; 6M prompt + 9M completion tokens.
    assert (api["requests"], api["cost_micro_usd"]) == (3, 2_400_000)

    page = await browser.get("/dashboard/usage?days=7&metric=cost")
    assert page.status == 200, page.text
    assert f'id="total-requests">{api["requests"]}<' in page.text
    assert 'id="total-cost">$2.40<' in page.text
    assert f"{api['prompt_tokens']:,}" in page.text and f"{api['completion_tokens']:,}" in page.text
