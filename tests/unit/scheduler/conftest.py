"""Fixtures: a real scheduler built by its factory, serving gRPC on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic_common.grpc_client import create_channel
from cic_common.redis import create_redis
from cic_common.settings import parse_settings
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.registry_redis import RedisNodeRegistry
from cic_scheduler.server import create_service
from tests.unit.scheduler.support import FakeNodeHealth, RunningScheduler, stub_for

StartScheduler = Callable[..., Awaitable[RunningScheduler]]
MakeRegistry = Callable[..., RedisNodeRegistry]


@pytest.fixture
async def start_scheduler(redis_url: str, redis_prefix: str) -> AsyncIterator[StartScheduler]:
    """Starts schedulers with settings from keyword arguments (environment names), all sharing
    the test's Redis key prefix (so they are replicas of one another); by default nodes are not
    probed during a test, so test endpoints need not answer, and nodes are scraped and probed
    (when they are) in the test's own process."""
    running: list[RunningScheduler] = []

    async def start(**env: str) -> RunningScheduler:
        environ = {
            "GRPC_PORT": "0",
            "HEALTH_PROBE_INTERVAL_S": "3600",
            "SIGNALS_PROCESS": "false",  # scrapes and probes in the test's process
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": redis_prefix,
            **env,
        }
        settings = parse_settings(SchedulerSettings, environ)
        metrics = CollectorRegistry()
        service = await create_service(settings, metrics)
        port = await service.start(host="127.0.0.1")
        channel = create_channel(f"127.0.0.1:{port}")
        scheduler = RunningScheduler(service, stub_for(channel), channel, metrics)
        running.append(scheduler)
        return scheduler

    yield start
    for scheduler in running:
        await scheduler.channel.close()
        await scheduler.service.stop(0)


@pytest.fixture
async def scheduler(start_scheduler: StartScheduler) -> RunningScheduler:
    return await start_scheduler()


@pytest.fixture
async def node_health() -> AsyncIterator[FakeNodeHealth]:
    server = FakeNodeHealth()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_registry(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeRegistry]:
    """Builds registries on the test's key prefix (replicas of one another), with settings from
    keyword arguments (lease TTL 60 s, breaker after 3 failures and open 10 s by default)."""
    made: list[tuple[RedisNodeRegistry, Redis]] = []

    def make(**options: Any) -> RedisNodeRegistry:
        client = create_redis(redis_url)
        options = {"lease_ttl_s": 60.0, "breaker_failures": 3, "breaker_open_s": 10.0, **options}
        registry = RedisNodeRegistry(client, redis_prefix, **options)
        made.append((registry, client))
        return registry

    yield make
    for registry, client in made:
        await registry.aclose()
        await client.aclose()
