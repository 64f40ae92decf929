"""Sign-in by one-time email link, through a real SMTP server: new and existing tenants, invite
codes, single use and expiry, hashed storage, cookies, sign-out and the settings it needs."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import asyncpg
import pytest

from cic_common.settings import SettingsError, parse_settings
from cic_gateway.config import GatewaySettings
from tests.support.mailbox import sign_in_link
from tests.unit.dashboard.conftest import PUBLIC_URL, Dashboard, csrf_of
from tests.unit.gateway.conftest import ADMIN_TOKEN


async def test_a_new_email_gets_a_link_by_mail_and_signs_in_to_a_new_tenant(
    dashboard: Dashboard, database_url: str
) -> None:
    browser = dashboard.browser()
    sent = await dashboard.request_link(browser, "new.person@example.com")
    assert sent.status == 200 and "Check your email" in sent.text
    mail = await dashboard.mailbox.next_mail("new.person@example.com")
    assert mail["From"] == "CIC <no-reply@dashboard.test>"
    link = sign_in_link(mail)
    assert link.startswith(f"{PUBLIC_URL}/dashboard/sign-in/link?token=")  # never the Host header

    done = await dashboard.follow_link(browser, link)
    assert done.status == 303 and done.location == "/dashboard/usage"
    cookie = done.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("cic_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie
    assert "Path=/dashboard" in session_cookie and "Secure" not in session_cookie

    account = await browser.get("/dashboard/account")
    assert account.status == 200 and "new.person@example.com" in account.text
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert [t["email"] for t in tenants["data"]] == ["new.person@example.com"]
    assert tenants["data"][0]["id"] in account.text

    token = urlsplit(link).query.removeprefix("token=")
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT token_hash, used_at FROM gateway.dashboard_sign_in_links")
        session_rows = await conn.fetch("SELECT id_hash FROM gateway.dashboard_sessions")
    finally:
        await conn.close()
    assert [r["token_hash"] for r in rows] == [hashlib.sha256(token.encode()).digest()]
    assert rows[0]["used_at"] is not None
    session_id = browser.cookie("cic_session")
    assert session_id and [r["id_hash"] for r in session_rows] == [
        hashlib.sha256(session_id.encode()).digest()
    ]


async def test_an_email_that_belongs_to_a_tenant_signs_in_to_that_tenant(
    dashboard: Dashboard,
) -> None:
    status, tenant = await dashboard.gateway.admin(
        "POST", "/admin/tenants", {"name": "Acme", "email": "Ops@Acme.example"}
    )
    assert status == 201
    browser, _ = await dashboard.sign_in("ops@acme.example")
    account = await browser.get("/dashboard/account")
    assert tenant["id"] in account.text and "Acme" in account.text
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert len(tenants["data"]) == 1  # no second tenant


async def test_a_link_works_once_and_opening_it_does_not_spend_it(dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    await dashboard.request_link(browser, "once@example.com")
    link = sign_in_link(await dashboard.mailbox.next_mail("once@example.com"))
    for _ in range(2):  # a mail scanner opening the link spends nothing
        assert (await browser.get(link)).status == 200
    assert (await dashboard.follow_link(browser, link)).status == 303
    other = dashboard.browser()
    again = await dashboard.follow_link(other, link)
    assert again.status == 400 and "expired or was used" in again.text
    assert other.cookie("cic_session") is None
    assert (await other.get("/dashboard/keys")).location == "/dashboard/sign-in"


async def test_an_expired_link_is_refused(dashboard: Dashboard, database_url: str) -> None:
    browser = dashboard.browser()
    await dashboard.request_link(browser, "late@example.com")
    link = sign_in_link(await dashboard.mailbox.next_mail("late@example.com"))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE gateway.dashboard_sign_in_links SET expires_at = now() - interval '1 second'"
        )
    finally:
        await conn.close()
    refused = await dashboard.follow_link(browser, link)
    assert refused.status == 400 and browser.cookie("cic_session") is None
    for bogus in ("nonsense", "x" * 43):
        page = await browser.post(
            "/dashboard/sign-in/link",
            {"csrf_token": browser.cookie("cic_csrf") or "", "token": bogus},
        )
        assert page.status == 400


async def test_invite_only_sign_up_needs_an_unused_invite_code(start_dashboard) -> None:
    dashboard: Dashboard = await start_dashboard(
        DASHBOARD_SIGNUP="invite", DASHBOARD_INVITE_CODES="alpha-123, beta-456"
    )
    browser = dashboard.browser()
    for code in ("", "wrong-code"):
        refused = await dashboard.request_link(browser, "first@example.com", code)
        assert refused.status == 400 and "invite code" in refused.text
    assert dashboard.mailbox.mails == []

    await dashboard.sign_in("first@example.com", invite="alpha-123")
    spent = await dashboard.request_link(dashboard.browser(), "second@example.com", "alpha-123")
    assert spent.status == 400 and "invite code" in spent.text
    await dashboard.sign_in("second@example.com", invite="beta-456")
    # A tenant that exists needs no code.
    await dashboard.sign_in("first@example.com")
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert sorted(t["email"] for t in tenants["data"]) == [
        "first@example.com",
        "second@example.com",
    ]


async def test_two_links_with_one_invite_make_one_tenant(start_dashboard) -> None:
    dashboard: Dashboard = await start_dashboard(
        DASHBOARD_SIGNUP="invite", DASHBOARD_INVITE_CODES="only-one"
    )
    first, second = dashboard.browser(), dashboard.browser()
    await dashboard.request_link(first, "a@example.com", "only-one")
    await dashboard.request_link(second, "b@example.com", "only-one")  # not spent yet
    link_a = sign_in_link(await dashboard.mailbox.next_mail("a@example.com"))
    link_b = sign_in_link(await dashboard.mailbox.next_mail("b@example.com"))
    assert (await dashboard.follow_link(first, link_a)).status == 303
    refused = await dashboard.follow_link(second, link_b)
    assert refused.status == 403 and "invite" in refused.text
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert [t["email"] for t in tenants["data"]] == ["a@example.com"]


async def test_sign_out_ends_the_session_on_the_server(dashboard: Dashboard) -> None:
    browser, _ = await dashboard.sign_in()
    stolen = browser.cookie("cic_session")
    replay = dashboard.browser()
    replay.set_cookie("cic_session", stolen or "")
    assert (await replay.get("/dashboard/keys")).status == 200
    out = await browser.submit("/dashboard/account", "/dashboard/sign-out", {})
    assert out.status == 303 and out.location == "/dashboard/sign-in"
    assert (await replay.get("/dashboard/keys")).location == "/dashboard/sign-in"


async def test_sign_out_everywhere_ends_every_session_of_that_person(
    dashboard: Dashboard,
) -> None:
    laptop, email = await dashboard.sign_in()
    phone, _ = await dashboard.sign_in(email)
    other_person, _ = await dashboard.sign_in()
    done = await phone.submit("/dashboard/account", "/dashboard/account/sign-out-everywhere", {})
    assert done.status == 303
    assert (await laptop.get("/dashboard/keys")).location == "/dashboard/sign-in"
    assert (await phone.get("/dashboard/keys")).location == "/dashboard/sign-in"
    assert (await other_person.get("/dashboard/keys")).status == 200


async def test_sessions_are_secure_only_behind_https_the_gateway_trusts(start_dashboard) -> None:
    https = {"X-Forwarded-Proto": "https"}
    trusting: Dashboard = await start_dashboard(DASHBOARD_TRUST_FORWARDED="true")
    page = await trusting.browser().get("/dashboard/sign-in", headers=https)
    assert "Secure" in page.headers["Set-Cookie"]
    untrusting: Dashboard = await start_dashboard()
    page = await untrusting.browser().get("/dashboard/sign-in", headers=https)
    assert "Secure" not in page.headers["Set-Cookie"]


async def test_pages_forbid_framing_and_referrers_and_caching(dashboard: Dashboard) -> None:
    page = await dashboard.browser().get("/dashboard/sign-in")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Content-Type"].startswith("text/html")


async def test_a_mail_server_that_is_down_gets_a_clear_page(start_dashboard) -> None:
    dashboard: Dashboard = await start_dashboard(SMTP_PORT="1")
    sent = await dashboard.request_link(dashboard.browser(), "nobody@example.com")
    assert sent.status == 503 and "could not send the mail" in sent.text
    assert "Traceback" not in sent.text


async def test_a_bad_email_address_is_refused_on_the_form(dashboard: Dashboard) -> None:
    browser = dashboard.browser()
    for bad in ("", "no-at-sign", "a@b", "x@y.z\r\nBcc: evil@example.com"):
        page = await dashboard.request_link(browser, bad)
        assert page.status == 400 and "valid email" in page.text
    assert dashboard.mailbox.mails == []


def test_sign_in_settings_fail_fast_naming_the_variable() -> None:
    base = {
        "DATABASE_URL": "postgresql://db/cic",
        "REDIS_URL": "redis://r:6379/0",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SCHEDULER_ADDR": "s:1",
        "BILLING_ADDR": "b:1",
        "ORCHESTRATOR_ADDR": "o:1",
    }
    cases = [
        ({"SMTP_HOST": "smtp.example.com"}, "DASHBOARD_PUBLIC_URL is invalid"),
        ({"OIDC_ISSUER": "https://id.example.com"}, "OIDC_CLIENT_ID is invalid"),
        ({"OIDC_ISSUER": "ftp://id"}, "OIDC_ISSUER is invalid"),
        ({"DASHBOARD_PUBLIC_URL": "dashboard.example.com"}, "DASHBOARD_PUBLIC_URL is invalid"),
        ({"DASHBOARD_SIGNUP": "sometimes"}, "DASHBOARD_SIGNUP is invalid"),
    ]
    for extra, message in cases:
        with pytest.raises(SettingsError, match=message):
            parse_settings(GatewaySettings, {**base, **extra})
    ok = parse_settings(
        GatewaySettings,
        {**base, "DASHBOARD_INVITE_CODES": " a, b ,,c", "DASHBOARD_PUBLIC_URL": "https://x.io/"},
    )
    assert ok.dashboard_invite_codes == ("a", "b", "c")
    assert ok.dashboard_public_url == "https://x.io"
    assert csrf_of('name="csrf_token" value="t"') == "t"


async def test_signing_in_again_replaces_the_session_the_browser_had(dashboard: Dashboard) -> None:
    browser, email = await dashboard.sign_in()
    first = browser.cookie("cic_session")
    csrf = csrf_of((await browser.get("/dashboard/account")).text)  # the session's own
    sent = await browser.post("/dashboard/sign-in/email", {"csrf_token": csrf, "email": email})
    assert sent.status == 200
    done = await dashboard.follow_link(
        browser, sign_in_link(await dashboard.mailbox.next_mail(email))
    )
    assert done.status == 303
    second = browser.cookie("cic_session")
    assert first and second and first != second
    replay = dashboard.browser()
    replay.set_cookie("cic_session", first)
    assert (await replay.get("/dashboard/keys")).location == "/dashboard/sign-in"
    assert (await browser.get("/dashboard/keys")).status == 200
