"""Builds the real billing service on port 0 and the usage events the tests send it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_billing.config import Settings
from cic_billing.server import BillingService, create_service
from cic_common.grpc_client import create_channel
from cic_common.settings import parse_settings
from tests.support.fake_stripe import FakeStripe

FINISHED = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


@dataclass
class RunningBilling:
    service: BillingService
    stub: billing_pb2_grpc.BillingServiceAsyncStub
    channel: grpc.aio.Channel
    registry: CollectorRegistry
    database_url: str
    address: str = ""  # host:port of its gRPC server

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    async def ledger_rows(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetch("SELECT * FROM billing.usage_events ORDER BY request_id")
        finally:
            await conn.close()


def stripe_billing_env(redis_url: str, redis_prefix: str, stripe: FakeStripe) -> dict[str, str]:
    """Settings for a billing service that talks to ``stripe`` and publishes budget state to
    Redis, with Stripe reporting held back (tests send reports themselves)."""
    return {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "STRIPE_API_KEY": "sk_test_fake",
        "STRIPE_API_BASE": stripe.url,
        "STRIPE_REPORT_INTERVAL_S": "86400",
        "STRIPE_RECONCILE_INTERVAL_S": "0",
    }


@contextlib.asynccontextmanager
async def running_billing(database_url: str, **env: str) -> AsyncIterator[RunningBilling]:
    """The service built by its factory, serving on a free port, with a channel to it."""
    settings = parse_settings(Settings, {"DATABASE_URL": database_url, **env})
    registry = CollectorRegistry()
    service = await create_service(settings, registry)
    port = await service.start(0, host="127.0.0.1")
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        yield RunningBilling(
            service,
            stub,  # type: ignore[arg-type]
            channel,
            registry,
            database_url,
            f"127.0.0.1:{port}",
        )
    finally:
        await channel.close()
        await service.stop()


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def usage_event(
    request_id: str,
    *,
    tenant_id: str = "tenant-a",
    model: str = "cic-sim-small",
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    finished_at: datetime = FINISHED,
    api_key_id: str = "key-1",
    environment_id: str = "",
    region: str = "",
) -> billing_pb2.UsageEvent:
    return billing_pb2.UsageEvent(
        request_id=request_id,
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        model=model,
        node_id="node-1",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        started_at=timestamp(finished_at - timedelta(seconds=2)),
        finished_at=timestamp(finished_at),
        streamed=True,
        status_code=200,
        environment_id=environment_id,
        region=region,
    )


async def record(
    billing: RunningBilling, *events: billing_pb2.UsageEvent
) -> billing_pb2.RecordUsageResponse:
    return await billing.stub.RecordUsage(billing_pb2.RecordUsageRequest(events=events))
