"""Billing with its notifier on real Postgres and Redis, quick retries, and a publisher on the
same event bus; channels made and deliveries read through the real RPCs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2
from cic_common.events_bus import EventBus, EventKind
from tests.unit.billing.support import RunningBilling, running_billing

OPERATOR = billing_pb2.NotificationScope(operator=True)

QUICK = {
    "NOTIFY_RETRY_INITIAL_S": "0.05",
    "NOTIFY_RETRY_MAX_S": "0.2",
    "NOTIFY_POLL_INTERVAL_S": "0.05",
    "NOTIFY_MAX_ATTEMPTS": "4",
    "NOTIFY_TIMEOUT_S": "5",
    # The receivers are on 127.0.0.1, which tenants' URLs may not name by default.
    "NOTIFY_ALLOW_PRIVATE_TARGETS": "true",
}


def tenant(tenant_id: str) -> billing_pb2.NotificationScope:
    return billing_pb2.NotificationScope(tenant_id=tenant_id)


@contextlib.asynccontextmanager
async def notifying_billing(
    database_url: str, redis_url: str, prefix: str, **env: str
) -> AsyncIterator[RunningBilling]:
    settings = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix, **QUICK, **env}
    async with running_billing(database_url, **settings) as running:
        yield running


@contextlib.asynccontextmanager
async def event_bus(redis_url: str, prefix: str) -> AsyncIterator[EventBus]:
    client = Redis.from_url(redis_url)
    try:
        yield EventBus(client, prefix)
    finally:
        await client.aclose()


async def publish(bus: EventBus, kind: EventKind, tenant_id: str | None, **data: Any) -> str:
    event = await bus.publish(kind, tenant_id, data)
    assert event is not None
    return event.id


async def make_channel(
    billing: RunningBilling,
    scope: billing_pb2.NotificationScope,
    type_: str,
    target: str,
    kinds: Sequence[str] = (),
    name: str = "",
) -> billing_pb2.CreateNotificationChannelResponse:
    return await billing.stub.CreateNotificationChannel(
        billing_pb2.CreateNotificationChannelRequest(
            scope=scope, type=type_, name=name, target=target, event_kinds=list(kinds)
        )
    )


async def deliveries(
    billing: RunningBilling, scope: billing_pb2.NotificationScope, channel_id: str
) -> list[billing_pb2.NotificationDelivery]:
    reply = await billing.stub.ListNotificationDeliveries(
        billing_pb2.ListNotificationDeliveriesRequest(scope=scope, channel_id=channel_id)
    )
    return list(reply.deliveries)


async def wait_for_deliveries(
    billing: RunningBilling,
    scope: billing_pb2.NotificationScope,
    channel_id: str,
    done: Callable[[list[billing_pb2.NotificationDelivery]], bool],
    timeout_s: float = 15.0,
) -> list[billing_pb2.NotificationDelivery]:
    """The channel's deliveries once ``done`` holds for them (AssertionError at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await deliveries(billing, scope, channel_id)
        if done(found):
            return found
        assert time.monotonic() < deadline, f"deliveries never settled: {found}"
        await asyncio.sleep(0.05)


def settled(count: int) -> Callable[[list[billing_pb2.NotificationDelivery]], bool]:
    """``count`` deliveries, none of them pending."""
    return lambda found: len(found) == count and all(d.state != "pending" for d in found)
