"""The real gateway (through its factory, on a real port, real Postgres and Redis) with sign-in by
email through a real SMTP server (aiosmtpd) and by OpenID Connect through a local provider, and a
cookie-keeping HTTP client that fills in forms the way a browser does."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from yarl import URL

from tests.support.fake_oidc import FakeOidcProvider
from tests.support.mailbox import Mailbox, sign_in_link
from tests.unit.gateway.conftest import (  # noqa: F401 (fixtures used here)
    Gateway,
    StartGateway,
    node,
    services,
    start_gateway,
)

PUBLIC_URL = "http://dashboard.test"
CLIENT_ID = "cic-dashboard"
CLIENT_SECRET = "oidc-client-secret-" + "y" * 20
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, html
    return match.group(1)


@dataclass
class Page:
    status: int
    text: str
    headers: Any

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))


class Browser:
    """Cookies, no automatic redirects, and links of ``PUBLIC_URL`` sent to the gateway."""

    def __init__(self, gateway_url: str) -> None:
        self.base = gateway_url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(PUBLIC_URL):
            return self.base + path_or_url[len(PUBLIC_URL) :]
        return path_or_url if "://" in path_or_url else self.base + path_or_url

    async def get(self, path: str, **kwargs: Any) -> Page:
        async with self.http.get(self.url(path), allow_redirects=False, **kwargs) as resp:
            return Page(resp.status, await resp.text(), resp.headers)

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> Page:
        async with self.http.post(
            self.url(path), data=data, allow_redirects=False, **kwargs
        ) as resp:
            return Page(resp.status, await resp.text(), resp.headers)

    async def submit(self, page_path: str, action: str, fields: dict[str, str]) -> Page:
        """Opens ``page_path`` and sends one of its forms with the page's CSRF token."""
        page = await self.get(page_path)
        assert page.status == 200, (page_path, page.status)
        return await self.post(action, {"csrf_token": csrf_of(page.text), **fields})

    def set_cookie(self, name: str, value: str) -> None:
        self.http.cookie_jar.update_cookies(
            {name: value}, response_url=URL(self.base + "/dashboard/")
        )

    def cookie(self, name: str) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    async def close(self) -> None:
        await self.http.close()


@dataclass
class Dashboard:
    gateway: Gateway
    mailbox: Mailbox
    oidc: FakeOidcProvider
    browsers: list[Browser]

    def browser(self) -> Browser:
        browser = Browser(self.gateway.url)
        self.browsers.append(browser)
        return browser

    async def request_link(self, browser: Browser, email: str, invite: str = "") -> Page:
        fields = {"email": email, **({"invite_code": invite} if invite else {})}
        return await browser.submit("/dashboard/sign-in", "/dashboard/sign-in/email", fields)

    async def follow_link(self, browser: Browser, link: str) -> Page:
        confirm = await browser.get(link)
        assert confirm.status == 200, confirm.text
        token = urlsplit(link).query.removeprefix("token=")
        return await browser.post(
            "/dashboard/sign-in/link", {"csrf_token": csrf_of(confirm.text), "token": token}
        )

    async def sign_in(self, email: str | None = None, invite: str = "") -> tuple[Browser, str]:
        """A browser signed in by email link as ``email`` (a new tenant by default)."""
        email = email or f"user-{secrets.token_hex(4)}@example.com"
        browser = self.browser()
        sent = await self.request_link(browser, email, invite)
        assert sent.status == 200, sent.text
        mail = await self.mailbox.next_mail(email)
        done = await self.follow_link(browser, sign_in_link(mail))
        assert done.status == 303 and done.location == "/dashboard/usage", done.text
        return browser, email


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    await box.start()
    yield box
    await box.stop()


@pytest.fixture
async def oidc_provider() -> AsyncIterator[FakeOidcProvider]:
    provider = FakeOidcProvider(CLIENT_ID, CLIENT_SECRET)
    await provider.start()
    yield provider
    await provider.stop()


def dashboard_env(mailbox: Mailbox, oidc: FakeOidcProvider, **extra: str) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mailbox.port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "CIC <no-reply@dashboard.test>",
        "OIDC_ISSUER": oidc.issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "DASHBOARD_PUBLIC_URL": PUBLIC_URL,
        **extra,
    }


@pytest.fixture
async def start_dashboard(
    start_gateway: StartGateway,  # noqa: F811
    mailbox: Mailbox,
    oidc_provider: FakeOidcProvider,
) -> AsyncIterator[Any]:
    made: list[Dashboard] = []

    async def start(**extra: str) -> Dashboard:
        gateway = await start_gateway(**dashboard_env(mailbox, oidc_provider, **extra))
        dashboard = Dashboard(gateway, mailbox, oidc_provider, [])
        made.append(dashboard)
        return dashboard

    yield start
    for dashboard in made:
        for browser in dashboard.browsers:
            await browser.close()


@pytest.fixture
async def dashboard(start_dashboard: Any) -> Dashboard:
    result: Dashboard = await start_dashboard()
    return result
