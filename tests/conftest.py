"""Fixtures every test may use: a real Postgres and Redis (see tests/support/stores.py)."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support import stores
from tests.support.fake_stripe import FakeStripe


@pytest.fixture(scope="session", autouse=True)
def _isolated_home() -> Iterator[None]:
    """SDKs that write under $HOME (Stripe telemetry, SkyPilot) write to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="cic-home-") as home:
        old = os.environ.get("HOME")
        os.environ["HOME"] = home
        yield
        if old is not None:
            os.environ["HOME"] = old


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A Postgres server on which tests create (and drop) their own databases."""
    with stores.postgres_server() as url:
        yield url


@pytest.fixture
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name, url = await stores.create_database(postgres_server_url)
    try:
        yield url
    finally:
        await stores.drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with stores.redis_server() as url:
        yield url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of one test's own; its keys are deleted afterwards."""
    prefix = f"cic-test-{secrets.token_hex(4)}:"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    """A local stand-in for Stripe's API that the real SDK talks to (tests/support/fake_stripe)."""
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()
