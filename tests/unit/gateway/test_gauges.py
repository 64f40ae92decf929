"""``cic_gateway_dependency_up``: a background probe of Postgres, Redis, the scheduler and
billing, every ``DEPENDENCY_PROBE_INTERVAL_S``, that turns each gauge to 0 when its dependency
goes away and back to 1 when it returns."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.tcp_relay import TcpRelay

DEPENDENCIES = ("postgres", "redis", "scheduler", "billing")


@pytest.fixture
async def relays(
    database_url: str, redis_url: str, services: FakeServices
) -> AsyncIterator[dict[str, TcpRelay]]:
    """Each dependency behind a port of its own that the test can cut."""
    started = {
        "postgres": await TcpRelay(database_url).start(),
        "redis": await TcpRelay(redis_url).start(),
        "scheduler": await TcpRelay(f"tcp://{services.address}").start(),
        "billing": await TcpRelay(f"tcp://{services.address}").start(),
    }
    yield started
    for relay in started.values():
        await relay.cut()


async def _gauges_become(gateway: Gateway, expected: dict[str, float]) -> None:
    """Waits (up to 15 s) until every gauge named in ``expected`` shows its value."""
    sample = gateway.registry.get_sample_value
    for _ in range(300):
        now = {d: sample("cic_gateway_dependency_up", {"dependency": d}) for d in expected}
        if now == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gauges are {now}, expected {expected}")


async def test_each_gauge_follows_its_dependency(
    start_gateway: StartGateway, relays: dict[str, TcpRelay]
) -> None:
    gateway = await start_gateway(
        DATABASE_URL=relays["postgres"].url,
        REDIS_URL=relays["redis"].url,
        SCHEDULER_ADDR=relays["scheduler"].address,
        BILLING_ADDR=relays["billing"].address,
        DEPENDENCY_PROBE_INTERVAL_S="0.1",
    )
    await _gauges_become(gateway, dict.fromkeys(DEPENDENCIES, 1.0))

    await relays["billing"].cut()
    await _gauges_become(gateway, {"billing": 0.0, "scheduler": 1.0, "postgres": 1.0})

    for name in ("postgres", "redis", "scheduler"):
        await relays[name].cut()
    await _gauges_become(gateway, dict.fromkeys(DEPENDENCIES, 0.0))
    async with gateway.session.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
        assert sorted((await resp.json())["failed"]) == ["postgres", "redis", "scheduler"]

    for relay in relays.values():
        await relay.restore()
    await _gauges_become(gateway, dict.fromkeys(DEPENDENCIES, 1.0))
    async with gateway.session.get(gateway.url + "/readyz") as resp:
        assert resp.status == 200
