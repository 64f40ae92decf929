"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against the
whole platform as separate processes. Sign-up by the emailed link, a key created, that key used
with the official openai SDK, the request found on the usage page, the key revoked; the pages
checked at laptop and phone widths. Screenshots are kept under test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator

import openai
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from cic_devstack.stack import Stack
from tests.support.mailbox import Mailbox, sign_in_link
from tests.support.platform import ARTIFACTS, free_ports, running_platform

MODEL = "cic-sim-small"
SHOTS = ARTIFACTS / "browser"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.e2e


def chromium_path() -> str:
    """Debian's chromium; the test fails (it is never skipped) when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed for the browser tests: apt-get install -y chromium"
    return path


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    await box.start()
    yield box
    await box.stop()


@pytest.fixture
async def platform(
    database_url: str, redis_url: str, redis_prefix: str, mailbox: Mailbox
) -> AsyncIterator[Stack]:
    ports = free_ports()
    env = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mailbox.port),
        "SMTP_SECURITY": "none",
        "DASHBOARD_PUBLIC_URL": f"http://127.0.0.1:{ports.gateway}",
    }
    async with running_platform(
        database_url, redis_url, redis_prefix, "browser", env=env, ports=ports
    ) as stack:
        yield stack


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        await chromium.close()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def fits_the_screen(page: Page) -> None:
    """Nothing sticks out sideways (no horizontal scrolling on a phone)."""
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{page.url} is {overflow}px wider than the screen"


async def usage_shows(page: Page, requests: int, timeout_s: float = 20.0) -> None:
    """Reloads the usage page until billing has the request (usage is sent after the answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await page.goto(page.url.split("?")[0] + "?days=7&metric=requests")
        text = await page.locator("#total-requests").inner_text()
        if text == str(requests):
            return
        assert time.monotonic() < deadline, f"usage page still shows {text} requests"
        await asyncio.sleep(0.5)


async def test_sign_up_create_a_key_use_it_and_find_it_on_the_usage_page(
    platform: Stack, mailbox: Mailbox, browser: Browser
) -> None:
    base = platform.gateway_url
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()

    # Sign-up: a new address gets a link by mail and becomes a tenant.
    await page.goto(f"{base}/dashboard")
    await expect(page).to_have_url(f"{base}/dashboard/sign-in")
    await shot(page, "01-sign-in")
    await page.get_by_label("Work email").fill("founder@startup.example")
    await page.get_by_role("button", name="Email me a sign-in link").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    await shot(page, "02-check-your-email")
    link = sign_in_link(await mailbox.next_mail("founder@startup.example"))
    assert link.startswith(f"{base}/dashboard/sign-in/link?token=")
    await page.goto(link)
    await shot(page, "03-confirm-link")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{base}/dashboard/usage")
    await expect(page.locator("#total-requests")).to_have_text("0")
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["cic_session"]["httpOnly"] and cookies["cic_session"]["sameSite"] == "Lax"

    # A key, its secret shown once.
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Name").fill("browser-e2e")
    await page.get_by_label("Requests / minute").fill("600")
    await page.get_by_role("button", name="Create key").click()
    secret = (await page.locator("#new-key-secret").inner_text()).strip()
    assert secret.startswith("sk-cic-")
    await shot(page, "04-key-created")

    # The key works with the official SDK.
    client = openai.AsyncOpenAI(api_key=secret, base_url=f"{base}/v1", max_retries=0)
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the browser test"}]
    )
    assert chat.usage is not None and chat.usage.completion_tokens > 0

    # The request is on the usage page, by day and by model.
    await page.get_by_role("link", name="Usage & billing").click()
    await usage_shows(page, 1)
    by_model = page.locator("#by-model tbody tr")
    await expect(by_model).to_have_count(1)
    await expect(by_model.first).to_contain_text(MODEL)
    await expect(page.locator("svg.chart-wide rect.bar")).to_have_count(7)
    await expect(page.locator("#tenant-status")).to_have_text("active")
    await fits_the_screen(page)
    await shot(page, "05-usage-laptop")

    # The same pages on a phone.
    await page.set_viewport_size(PHONE)
    for path, name in (("usage", "06-usage-phone"), ("keys", "07-keys-phone")):
        await page.goto(f"{base}/dashboard/{path}")
        await fits_the_screen(page)
        await shot(page, name)
    await page.goto(f"{base}/dashboard/account")
    await expect(page.get_by_text("founder@startup.example").first).to_be_visible()
    await fits_the_screen(page)
    await shot(page, "08-account-phone")
    await page.set_viewport_size(LAPTOP)

    # Revoked in the browser, refused by the API.
    await page.goto(f"{base}/dashboard/keys")
    listed = (await page.locator("#keys").inner_text()).replace("\n", " ")
    assert secret not in await page.content() and secret[:12] in listed
    await page.get_by_role("button", name="Revoke browser-e2e").click()
    await expect(page.locator("#keys")).to_contain_text("revoked")
    await shot(page, "09-key-revoked")
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{base}/dashboard/sign-in")
    await page.goto(f"{base}/dashboard/keys")
    await expect(page).to_have_url(f"{base}/dashboard/sign-in")
    await context.close()
