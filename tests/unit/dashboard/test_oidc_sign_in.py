"""Sign-in by OpenID Connect against a local provider: authlib's real discovery, authorization
code with PKCE, token call and id_token checks (signature by the JWKS, issuer, nonce, verified
email), and the state bound to the browser that started the flow."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from joserfc.jwk import RSAKey

from tests.support.fake_oidc import Person
from tests.unit.dashboard.conftest import PUBLIC_URL, Browser, Dashboard, Page


async def _to_provider(browser: Browser, invite: str = "") -> Page:
    fields = {"invite_code": invite} if invite else {}
    started = await browser.submit("/dashboard/sign-in", "/dashboard/sign-in/oidc", fields)
    assert started.status == 303, started.text
    return started


async def _round_trip(dashboard: Dashboard, browser: Browser, invite: str = "") -> Page:
    """Start, let the provider answer, and come back to the callback."""
    started = await _to_provider(browser, invite)
    assert started.location.startswith(dashboard.oidc.issuer + "/authorize?")
    answered = await browser.get(started.location)
    assert answered.status == 302, answered.text
    assert answered.location.startswith(f"{PUBLIC_URL}/dashboard/sign-in/oidc/callback?")
    return await browser.get(answered.location)


async def test_a_verified_identity_signs_in_and_a_new_email_makes_a_tenant(
    dashboard: Dashboard,
) -> None:
    dashboard.oidc.person = Person("sso.user@example.com")
    browser = dashboard.browser()
    started = await _to_provider(browser)
    query = parse_qs(urlsplit(started.location).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
    assert query["redirect_uri"] == [f"{PUBLIC_URL}/dashboard/sign-in/oidc/callback"]
    assert "HttpOnly" in started.headers["Set-Cookie"]

    back = await browser.get((await browser.get(started.location)).location)
    assert back.status == 303 and back.location == "/dashboard/usage", back.text
    account = await browser.get("/dashboard/account")
    assert "sso.user@example.com" in account.text and "single sign-on" in account.text
    token_call = dashboard.oidc.token_requests[-1]
    assert token_call["grant_type"] == "authorization_code" and token_call["code_verifier"]
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert [t["email"] for t in tenants["data"]] == ["sso.user@example.com"]

    again = dashboard.browser()  # the same person later: the same tenant
    assert (await _round_trip(dashboard, again)).status == 303
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert len(tenants["data"]) == 1


async def test_an_unverified_email_is_refused(dashboard: Dashboard) -> None:
    dashboard.oidc.person = Person("unverified@example.com", email_verified=False)
    browser = dashboard.browser()
    refused = await _round_trip(dashboard, browser)
    assert refused.status == 401 and browser.cookie("cic_session") is None
    _, tenants = await dashboard.gateway.admin("GET", "/admin/tenants")
    assert tenants["data"] == []


async def test_an_id_token_not_signed_by_the_providers_keys_is_refused(
    dashboard: Dashboard,
) -> None:
    dashboard.oidc.signing_key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1"})
    browser = dashboard.browser()
    refused = await _round_trip(dashboard, browser)
    assert refused.status == 401 and browser.cookie("cic_session") is None
    assert "Traceback" not in refused.text


async def test_an_id_token_from_another_issuer_is_refused(dashboard: Dashboard) -> None:
    dashboard.oidc.issuer_override = "https://evil.example.com"
    browser = dashboard.browser()
    assert (await _round_trip(dashboard, browser)).status == 401
    assert browser.cookie("cic_session") is None


async def test_the_callback_must_come_back_to_the_browser_that_started_once(
    dashboard: Dashboard,
) -> None:
    victim, attacker = dashboard.browser(), dashboard.browser()
    started = await _to_provider(attacker)
    callback = (await attacker.get(started.location)).location
    # Login CSRF: the attacker's callback URL opened in another browser has no matching state.
    assert (await victim.get(callback)).status == 400
    assert victim.cookie("cic_session") is None
    state = parse_qs(urlsplit(callback).query)["state"][0]
    assert attacker.cookie("cic_oidc_state") == state
    assert (await attacker.get(callback)).status == 303
    assert attacker.cookie("cic_oidc_state") is None
    attacker.set_cookie("cic_oidc_state", state)
    assert (await attacker.get(callback)).status == 401  # the state worked once
    assert (await attacker.get("/dashboard/sign-in/oidc/callback?state=x")).status == 400


async def test_invite_only_sign_up_by_oidc_needs_a_code(start_dashboard) -> None:
    dashboard: Dashboard = await start_dashboard(
        DASHBOARD_SIGNUP="invite", DASHBOARD_INVITE_CODES="sso-invite"
    )
    dashboard.oidc.person = Person("invited@example.com")
    refused = await _round_trip(dashboard, dashboard.browser())
    assert refused.status == 403 and "invite" in refused.text
    wrong = await _round_trip(dashboard, dashboard.browser(), invite="guess")
    assert wrong.status == 403
    assert (await _round_trip(dashboard, dashboard.browser(), invite="sso-invite")).status == 303
    dashboard.oidc.person = Person("second@example.com")
    spent = await _round_trip(dashboard, dashboard.browser(), invite="sso-invite")
    assert spent.status == 403


async def test_without_oidc_settings_the_button_and_routes_are_gone(start_gateway) -> None:
    gateway = await start_gateway()
    browser = Browser(gateway.url)
    try:
        page = await browser.get("/dashboard/sign-in")
        assert page.status == 200 and "Sign in with" not in page.text
        assert "not set up" in page.text
        assert (await browser.get("/dashboard/sign-in/oidc/callback?state=a&code=b")).status == 404
    finally:
        await browser.close()
