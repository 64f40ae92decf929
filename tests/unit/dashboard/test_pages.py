"""The signed-in pages: API keys (secret shown once, limits, revocation that the API honours at
once), usage and billing from billing's GetUsage, and the account page."""

from __future__ import annotations

import re

from cic.billing.v1 import billing_pb2
from tests.unit.dashboard.conftest import Dashboard, csrf_of
from tests.unit.gateway.tcp_relay import TcpRelay

SECRET = re.compile(r'<pre class="secret" id="new-key-secret">(sk-cic-[A-Za-z0-9_\-]+)</pre>')


async def test_a_key_is_created_with_its_secret_shown_once_and_works(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    created = await browser.submit(
        "/dashboard/keys", "/dashboard/keys", {"name": "backend", "rpm": "120", "tpm": "50000"}
    )
    assert created.status == 201, created.text
    match = SECRET.search(created.text)
    assert match, created.text
    secret = match.group(1)
    assert "only time it is shown" in created.text

    listing = await browser.get("/dashboard/keys")
    assert secret not in listing.text and secret[:12] in listing.text
    assert "120 rpm" in listing.text and "50,000 tpm" in listing.text

    gateway = dashboard.gateway
    async with gateway.session.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
    ) as resp:
        assert resp.status == 200
    tenant_id = re.search(
        r"<code>(ten_[0-9a-f]+)</code>", (await browser.get("/dashboard/account")).text
    )
    assert tenant_id
    _, keys = await gateway.admin("GET", f"/admin/tenants/{tenant_id.group(1)}/keys")
    assert [(k["name"], k["rpm_limit"], k["tpm_limit"]) for k in keys["data"]] == [
        ("backend", 120, 50000)
    ]


async def test_bad_key_fields_are_explained_on_the_form(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    cases = [
        ({"name": ""}, "Give the key a name"),
        ({"name": "x" * 201}, "Give the key a name"),
        ({"name": "k", "rpm": "-5"}, "Requests per minute must be"),
        ({"name": "k", "tpm": "1e9"}, "Tokens per minute must be"),
        ({"name": "k", "rpm": "0"}, "Requests per minute must be"),
        ({"name": "k", "tpm": "99999999999"}, "Tokens per minute must be"),
    ]
    for fields, message in cases:
        page = await browser.submit("/dashboard/keys", "/dashboard/keys", fields)
        assert page.status == 400 and message in page.text, fields
        assert "sk-cic-" not in page.text
    assert "No keys yet" in (await browser.get("/dashboard/keys")).text


async def test_a_revoked_key_is_refused_by_the_api_at_once(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    created = await browser.submit("/dashboard/keys", "/dashboard/keys", {"name": "temp"})
    secret = SECRET.search(created.text)
    assert secret
    gateway = dashboard.gateway
    headers = {"Authorization": f"Bearer {secret.group(1)}"}
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200  # now in the key cache
    key_id = re.search(r'data-key-id="(key_[0-9a-f]+)"', created.text)
    assert key_id
    revoked = await browser.submit(
        "/dashboard/keys", f"/dashboard/keys/{key_id.group(1)}/revoke", {}
    )
    assert revoked.status == 303 and revoked.location == "/dashboard/keys"
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 401
    listing = await browser.get("/dashboard/keys")
    assert (
        "revoked" in listing.text
        and f"/dashboard/keys/{key_id.group(1)}/revoke" not in listing.text
    )


def _usage(requests: int, cost_micro: int) -> billing_pb2.GetUsageResponse:
    return billing_pb2.GetUsageResponse(
        requests=requests,
        prompt_tokens=1200,
        completion_tokens=800,
        cost_micro_usd=cost_micro,
        by_model=[
            billing_pb2.ModelUsage(
                model="cic-sim-small",
                requests=requests,
                prompt_tokens=1200,
                completion_tokens=800,
                cost_micro_usd=cost_micro,
            )
        ],
    )


async def test_usage_shows_totals_days_models_and_a_chart_from_billing(
    dashboard: Dashboard,
) -> None:
    browser, _ = await dashboard.sign_in()
    billing = dashboard.gateway.services.billing
    billing.usage_reply = _usage(3, 2_500_000)
    billing.usage_queries.clear()
    page = await browser.get("/dashboard/usage?days=7&metric=requests")
    assert page.status == 200, page.text
    assert len(billing.usage_queries) == 8  # the range, and each of its 7 days
    tenant_ids = {q.tenant_id for q in billing.usage_queries}
    assert len(tenant_ids) == 1 and next(iter(tenant_ids)).startswith("ten_")
    days = sorted(q.start.ToDatetime() for q in billing.usage_queries)
    assert (days[-1] - days[1]).days == 6 and days[0] == days[1]
    assert 'id="total-requests">3<' in page.text and 'id="total-cost">$2.50<' in page.text
    assert "<code>cic-sim-small</code>" in page.text
    # Each day broken down by model too (the by-day table).
    assert page.text.count("<code>cic-sim-small</code> 3 req · $2.50") == 7
    assert page.text.count('<rect class="bar"') == 2 * 7  # a wide and a narrow chart
    assert 'aria-label="Requests per day"' in page.text
    assert 'id="tenant-status">active<' in page.text
    assert "Stripe is not set up here" in page.text  # the fake billing has no Stripe key
    assert 'action="/dashboard/billing/portal"' not in page.text

    for odd in ("?days=13", "?days=abc&metric=<script>", "?days=90&metric=tokens"):
        assert (await browser.get("/dashboard/usage" + odd)).status == 200


async def test_usage_page_when_billing_is_unreachable_says_so(start_dashboard) -> None:
    dashboard: Dashboard = await start_dashboard(BILLING_ADDR="127.0.0.1:1")
    browser, _ = await dashboard.sign_in()
    page = await browser.get("/dashboard/usage")
    assert page.status == 503 and "unavailable right now" in page.text
    assert "Traceback" not in page.text
    assert (await browser.get("/dashboard/keys")).status == 200  # the rest still works


async def test_suspension_is_shown(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    page = await browser.get("/dashboard/usage")
    assert 'id="tenant-status">active<' in page.text and "This account is" not in page.text
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    tenant_id = tenants["data"][0]["id"]
    await dashboard.gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"})
    page = await browser.get("/dashboard/usage")
    assert 'id="tenant-status">suspended<' in page.text and "This account is" in page.text


async def test_signed_out_pages_lead_to_sign_in(dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    for path in ("/dashboard", "/dashboard/keys", "/dashboard/usage", "/dashboard/account"):
        page = await browser.get(path)
        assert page.status == 303 and page.location == "/dashboard/sign-in", path
    css = await browser.get("/dashboard/static/dashboard.css")
    assert css.status == 200 and "@media" in css.text
    signin = await browser.get("/dashboard/sign-in")
    assert csrf_of(signin.text) == browser.cookie("cic_csrf")


async def test_with_postgres_or_redis_down_pages_say_so_in_html(
    start_dashboard, database_url: str, redis_url: str
) -> None:
    postgres = await TcpRelay(database_url).start()
    redis = await TcpRelay(redis_url).start()
    try:
        dashboard: Dashboard = await start_dashboard(DATABASE_URL=postgres.url, REDIS_URL=redis.url)
        browser, email = await dashboard.sign_in()
        await redis.cut()
        sent = await dashboard.request_link(dashboard.browser(), email)
        assert sent.status == 503 and "unavailable" in sent.text
        assert sent.headers["Content-Type"].startswith("text/html")
        await redis.restore()
        await postgres.cut()
        for path in ("/dashboard/keys", "/dashboard/usage", "/dashboard/sign-in"):
            page = await browser.get(path)
            assert page.status == 503 and "unavailable" in page.text, path
            assert "Traceback" not in page.text
        await postgres.restore()
        assert (await browser.get("/dashboard/keys")).status == 200
    finally:
        await postgres.cut()
        await redis.cut()
