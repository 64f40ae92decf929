"""A tenant sees and changes only its own keys and usage: another tenant's ids are tried on every
dashboard route. Every form needs its CSRF token; sign-in attempts are limited across replicas."""

from __future__ import annotations

import re

from aiohttp import web

from tests.unit.dashboard.conftest import Browser, Dashboard

SECRET = re.compile(r"(sk-cic-[A-Za-z0-9_\-]{20,})")

# Every dashboard route, with what the test does on it; a new route fails the test until added.
ROUTES = {
    ("/dashboard", "GET"),
    ("/dashboard/sign-in", "GET"),
    ("/dashboard/sign-in/email", "POST"),
    ("/dashboard/sign-in/link", "GET"),
    ("/dashboard/sign-in/link", "POST"),
    ("/dashboard/sign-in/oidc", "POST"),
    ("/dashboard/sign-in/oidc/callback", "GET"),
    ("/dashboard/sign-out", "POST"),
    ("/dashboard/keys", "GET"),
    ("/dashboard/keys", "POST"),
    ("/dashboard/keys/{key_id}/revoke", "POST"),
    ("/dashboard/usage", "GET"),
    ("/dashboard/billing/portal", "POST"),
    ("/dashboard/account", "GET"),
    ("/dashboard/account/sign-out-everywhere", "POST"),
    ("/dashboard/static", "GET"),
}


def _dashboard_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (r.resource.canonical, r.method)
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/dashboard")
        and r.method not in ("OPTIONS", "HEAD")
    }


async def _tenant_with_key(dashboard: Dashboard) -> tuple[Browser, str, str, str]:
    browser, _ = await dashboard.sign_in()
    created = await browser.submit("/dashboard/keys", "/dashboard/keys", {"name": "mine"})
    secret = SECRET.search(created.text)
    key_id = re.search(r'data-key-id="(key_[0-9a-f]+)"', created.text)
    account = await browser.get("/dashboard/account")
    tenant_id = re.search(r"<code>(ten_[0-9a-f]+)</code>", account.text)
    assert secret and key_id and tenant_id
    return browser, tenant_id.group(1), key_id.group(1), secret.group(1)


async def test_another_tenants_ids_are_refused_on_every_route(dashboard: Dashboard) -> None:
    assert _dashboard_routes(dashboard.gateway.app) == ROUTES
    alice, alice_tenant, alice_key, _ = await _tenant_with_key(dashboard)
    mallory, mallory_tenant, mallory_key, _ = await _tenant_with_key(dashboard)
    gateway = dashboard.gateway
    billing = gateway.services.billing

    # Pages: ids of Alice's in the query change nothing; only Mallory's own data is shown.
    nosy = f"?tenant_id={alice_tenant}&key_id={alice_key}&id={alice_tenant}"
    for path in ("/dashboard/keys", "/dashboard/usage", "/dashboard/account", "/dashboard"):
        billing.usage_queries.clear()
        billing.account_queries.clear()
        page = await mallory.get(path + nosy)
        assert page.status in (200, 303), path
        assert alice_tenant not in page.text and alice_key not in page.text, path
        assert all(q.tenant_id == mallory_tenant for q in billing.usage_queries), path
        assert all(q.tenant_id == mallory_tenant for q in billing.account_queries), path
    assert mallory_key in (await mallory.get("/dashboard/keys" + nosy)).text

    # Forms: revoking Alice's key is refused and her key keeps working.
    refused = await mallory.submit("/dashboard/keys", f"/dashboard/keys/{alice_key}/revoke", {})
    assert refused.status == 404
    for bogus in ("key_000000000000000000000000", "%00", "..%2f..%2fadmin"):
        page = await mallory.submit("/dashboard/keys", f"/dashboard/keys/{bogus}/revoke", {})
        assert page.status == 404, bogus
    # A key made through the form always belongs to the session's tenant, whatever is sent.
    made = await mallory.submit(
        "/dashboard/keys", "/dashboard/keys", {"name": "sneaky", "tenant_id": alice_tenant}
    )
    assert made.status == 201
    _, alice_keys = await gateway.admin("GET", f"/admin/tenants/{alice_tenant}/keys")
    assert [(k["id"], k["revoked_at"]) for k in alice_keys["data"]] == [(alice_key, None)]
    # A billing portal is only ever opened for the session's tenant, whatever the form names.
    billing.account_reply.stripe_enabled = True
    portal = await mallory.submit(
        "/dashboard/usage",
        "/dashboard/billing/portal",
        {"tenant_id": alice_tenant, "customer_id": f"cus_{alice_tenant}"},
    )
    assert portal.status == 303 and portal.location.endswith(f"_{mallory_tenant}")
    assert [r.tenant_id for r in billing.portal_requests] == [mallory_tenant]
    # Sign-out everywhere ends only Mallory's own sessions.
    await mallory.submit(
        "/dashboard/account", "/dashboard/account/sign-out-everywhere", {"tenant_id": alice_tenant}
    )
    assert (await alice.get("/dashboard/keys")).status == 200
    # Sign-in routes take no tenant id at all: a link or a callback only ever signs in the
    # email it was made for (covered in the sign-in tests); the session cookie of Alice's is
    # the only way to her pages.
    for path, method in ROUTES:
        if "{" in path or path == "/dashboard/static":
            continue
        if method == "GET":
            page = await mallory.get(path + nosy)
            assert alice_tenant not in page.text and alice_key not in page.text, path


async def test_every_form_needs_its_csrf_token(dashboard: Dashboard) -> None:
    browser, _, key_id, _ = await _tenant_with_key(dashboard)
    posts = [
        "/dashboard/keys",
        f"/dashboard/keys/{key_id}/revoke",
        "/dashboard/billing/portal",
        "/dashboard/account/sign-out-everywhere",
        "/dashboard/sign-out",
        "/dashboard/sign-in/email",
        "/dashboard/sign-in/link",
        "/dashboard/sign-in/oidc",
    ]
    for path in posts:
        for fields in (
            {},
            {"csrf_token": "forged"},
            {"csrf_token": browser.cookie("cic_csrf") or "x"},
        ):
            page = await browser.post(path, {"name": "x", "email": "a@example.com", **fields})
            # Signed in, every form takes the session's token only (not the cic_csrf cookie's).
            assert page.status == 403, (path, fields, page.status)
    # Signed out, the sign-in forms need the cic_csrf cookie's value.
    stranger = dashboard.browser()
    for path in ("/dashboard/sign-in/email", "/dashboard/sign-in/link", "/dashboard/sign-in/oidc"):
        for fields in ({}, {"csrf_token": "forged"}):
            page = await stranger.post(path, {"email": "a@example.com", "token": "t", **fields})
            assert page.status == 403, (path, fields)
    assert dashboard.mailbox.mails == []
    # The right token from another site's page is refused too (Origin checked).
    keys = await browser.get("/dashboard/keys")
    token = re.search(r'name="csrf_token" value="([^"]+)"', keys.text)
    assert token
    page = await browser.post(
        "/dashboard/keys",
        {"csrf_token": token.group(1), "name": "x"},
        headers={"Origin": "https://evil.example.com"},
    )
    assert page.status == 403
    for headers in ({"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        page = await browser.post(
            "/dashboard/keys", {"csrf_token": token.group(1), "name": "x"}, headers=headers
        )
        assert page.status == 403, headers
    listing = await browser.get("/dashboard/keys")
    assert listing.text.count("data-key-id=") == 1 and "revoked" not in listing.text
    assert dashboard.gateway.services.billing.portal_requests == []
    assert (await browser.get("/dashboard/usage")).status == 200  # still signed in


async def test_sign_in_attempts_are_limited_per_email_and_client_across_replicas(
    start_dashboard,
) -> None:
    limits = {"DASHBOARD_SIGNIN_PER_EMAIL": "2", "DASHBOARD_SIGNIN_PER_CLIENT": "4"}
    first: Dashboard = await start_dashboard(**limits)
    second: Dashboard = await start_dashboard(**limits)
    assert first.gateway.url != second.gateway.url
    assert (await first.request_link(first.browser(), "target@example.com")).status == 200
    assert (await second.request_link(second.browser(), "target@example.com")).status == 200
    limited = await first.request_link(first.browser(), "Target@Example.com")
    assert limited.status == 429 and "Too many sign-in attempts" in limited.text
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    assert len(first.mailbox.mails) == 2
    # Per client: other addresses from the same client run out too (4 attempts in all).
    assert (await second.request_link(second.browser(), "x1@example.com")).status == 200
    assert (await second.request_link(second.browser(), "x2@example.com")).status == 429
    spend = await first.browser().submit(
        "/dashboard/sign-in", "/dashboard/sign-in/link", {"token": "guess"}
    )
    assert spend.status == 429
