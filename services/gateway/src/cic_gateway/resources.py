"""What the app holds, under typed keys, and the ``cleanup_ctx`` generators that open and close it.

The contexts run in the order :func:`cic_gateway.app.create_app` appends them and close in the
reverse order, so the usage sender flushes before the billing channel closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import grpc
from aiohttp import web
from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2_grpc
from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic.scheduler.v1 import scheduler_pb2_grpc
from cic_common.db import close_pool, open_pool
from cic_common.events_bus import EventBus
from cic_common.grpc_client import create_channel
from cic_common.redis import create_redis
from cic_gateway.budget_gate import BudgetGate
from cic_gateway.catalog import Catalog
from cic_gateway.config import GatewaySettings
from cic_gateway.keys import KeyStore
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.proxy import Proxy
from cic_gateway.ratelimit import Limits, RateLimiter, create_rate_limiter_redis
from cic_gateway.revocation import Revocations
from cic_gateway.scheduler_client import SchedulerClient
from cic_gateway.usage import OutboxOptions, UsageOutbox, UsageSink

log = logging.getLogger(__name__)

USAGE_FLUSH_TIMEOUT_S = 4.0
RELEASE_DRAIN_TIMEOUT_S = 2.0
_UPSTREAM_CONNECTIONS = 1000


@dataclass(slots=True)
class Lifecycle:
    """``draining`` turns ``/readyz`` to 503 once the process was asked to stop."""

    draining: bool = False


@dataclass(frozen=True, slots=True)
class Services:
    """gRPC channels and stubs of the services behind the gateway."""

    scheduler_channel: grpc.aio.Channel
    scheduler: SchedulerClient
    billing: billing_pb2_grpc.BillingServiceStub
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub
    billing_channel: grpc.aio.Channel | None = None


SETTINGS = web.AppKey("settings", GatewaySettings)
METRICS = web.AppKey("metrics", GatewayMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
DB = web.AppKey("db", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
SERVICES = web.AppKey("services", Services)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
USAGE = web.AppKey("usage", UsageSink)
KEYS = web.AppKey("keys", KeyStore)
PROXY = web.AppKey("proxy", Proxy)
LIMITER = web.AppKey("rate_limiter", RateLimiter)
REVOCATIONS = web.AppKey("revocations", Revocations)
BUDGETS = web.AppKey("budgets", BudgetGate)
EVENTS = web.AppKey("events", EventBus)
CATALOG = web.AppKey("catalog", Catalog)


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await open_pool(settings.database_url, "gateway", "cic_gateway.migrations")
    app[DB] = pool
    app[KEYS] = KeyStore(
        pool, settings.key_cache_ttl_s, app[METRICS], stale_s=settings.key_cache_stale_s
    )
    yield
    await close_pool(pool)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = create_redis(app[SETTINGS].redis_url)
    app[REDIS] = client
    # The event bus (tenant.suspended, tenant.activated) on the same client.
    app[EVENTS] = EventBus(client, app[SETTINGS].redis_key_prefix, app[METRICS].events)
    yield
    await client.aclose()


async def ratelimit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The rate limiter, on a Redis client of its own (short timeouts, no retries)."""
    s = app[SETTINGS]
    limiter = RateLimiter(
        create_rate_limiter_redis(s.redis_url, s.rate_limit_redis_timeout_s),
        app[METRICS],
        prefix=s.redis_key_prefix,
        defaults=Limits(
            s.default_key_rpm,
            s.default_key_tpm,
            s.default_tenant_rpm,
            s.default_tenant_tpm,
            s.global_rpm_limit,
            s.global_tpm_limit,
        ),
        fail_open=s.rate_limit_fail_open,
        timeout_s=s.rate_limit_redis_timeout_s,
        default_max_tokens=s.default_max_tokens_estimate,
        lease_s=s.concurrency_lease_s,
    )
    app[LIMITER] = limiter
    yield
    await limiter.close()


async def revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    """Key revocations and tenant changes shared with every replica (after ``postgres_ctx``)."""
    s = app[SETTINGS]
    revocations = Revocations(s.redis_url, s.redis_key_prefix, app[KEYS], app[METRICS])
    await revocations.start()
    app[REVOCATIONS] = revocations
    yield
    await revocations.close()


async def budgets_ctx(app: web.Application) -> AsyncIterator[None]:
    """The blocked budget scopes, read from Redis at start and every BUDGET_REFRESH_S (after
    ``redis_ctx``)."""
    s = app[SETTINGS]
    gate = BudgetGate(app[REDIS], s.redis_key_prefix, s.budget_refresh_s, app[METRICS])
    await gate.start()
    app[BUDGETS] = gate
    yield
    await gate.close()


async def grpc_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    scheduler = create_channel(settings.scheduler_addr, settings.grpc_timeout_s)
    billing = create_channel(settings.billing_addr, settings.grpc_timeout_s)
    orchestrator = create_channel(settings.orchestrator_addr, settings.grpc_timeout_s)
    app[SERVICES] = Services(
        scheduler_channel=scheduler,
        scheduler=SchedulerClient(scheduler_pb2_grpc.SchedulerServiceStub(scheduler)),
        billing=billing_pb2_grpc.BillingServiceStub(billing),
        orchestrator=orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator),
        billing_channel=billing,
    )
    yield
    await app[SERVICES].scheduler.drain(RELEASE_DRAIN_TIMEOUT_S)
    for channel in (scheduler, billing, orchestrator):
        await channel.close()


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    """The model catalog, loaded from billing and kept fresh (after ``grpc_ctx``)."""
    s = app[SETTINGS]
    catalog = Catalog(
        app[SERVICES].billing,
        s.redis_url,
        s.redis_key_prefix,
        refresh_s=s.catalog_refresh_s,
        rpc_timeout_s=s.grpc_timeout_s,
    )
    await catalog.start()
    app[CATALOG] = catalog
    yield
    await catalog.close()


async def usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The durable usage outbox in Redis and its forwarder to billing (see ``usage``), on a
    Redis client of its own (its reads block for up to the flush interval)."""
    s = app[SETTINGS]
    block_s = min(s.usage_flush_interval_s, 5.0)
    client = Redis.from_url(
        s.redis_url,
        socket_connect_timeout=2.0,
        socket_timeout=block_s + 5.0,
        health_check_interval=15,
    )
    outbox = UsageOutbox(
        client,
        app[SERVICES].billing,
        app[METRICS],
        OutboxOptions(
            prefix=s.redis_key_prefix,
            batch_size=s.usage_batch_size,
            block_s=block_s,
            claim_idle_s=s.usage_outbox_claim_idle_s,
            rpc_timeout_s=s.grpc_timeout_s,
        ),
    )
    await outbox.start()
    app[USAGE] = outbox
    yield
    await outbox.close(USAGE_FLUSH_TIMEOUT_S)
    await client.aclose()


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled keep-alive session for every node; the proxy on top of it."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )
    connector = aiohttp.TCPConnector(
        limit=_UPSTREAM_CONNECTIONS, limit_per_host=0, keepalive_timeout=60
    )
    session = aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    )
    app[UPSTREAM] = session
    app[PROXY] = Proxy(session, app[SERVICES].scheduler, app[USAGE], app[METRICS])
    yield
    await session.close()
