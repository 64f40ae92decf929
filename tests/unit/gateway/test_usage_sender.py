"""The usage sender against a real gRPC server: batches, retries while billing is down, flushes
on close, and gives up only on events billing refuses as malformed."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from prometheus_client import CollectorRegistry

from cic.billing.v1 import billing_pb2_grpc
from cic_common.grpc_client import create_channel
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.usage import BillingUsageSender, UsageRecord
from tests.unit.gateway.fakes import FakeServices


def record(request_id: str, tenant_id: str = "ten_1") -> UsageRecord:
    now = datetime.now(UTC)
    return UsageRecord(
        request_id=request_id,
        tenant_id=tenant_id,
        api_key_id="key_1",
        model="m",
        node_id="node-1",
        prompt_tokens=3,
        completion_tokens=5,
        started_at=now,
        finished_at=now,
        streamed=True,
        status_code=200,
    )


@pytest.fixture
async def stub(services: FakeServices) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    channel = create_channel(services.address)
    yield billing_pb2_grpc.BillingServiceStub(channel)
    await channel.close()


def _sender(stub, registry: CollectorRegistry, **options) -> BillingUsageSender:
    options.setdefault("flush_interval_s", 0.02)
    options.setdefault("backoff_initial_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    return BillingUsageSender(stub, GatewayMetrics(registry), **options)


@pytest.mark.parametrize(
    "failure", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION]
)
async def test_events_are_retried_until_billing_takes_them(
    stub, services: FakeServices, failure: grpc.StatusCode
) -> None:
    registry = CollectorRegistry()
    sender = _sender(stub, registry)
    services.billing.fail_next = 3
    services.billing.fail_code = failure
    await sender.start()
    try:
        for i in range(5):
            sender.emit(record(f"req_{i}"))
        events = await services.billing.wait_for_events(5)
    finally:
        await sender.close(1.0)
    assert sorted(e.request_id for e in events) == [f"req_{i}" for i in range(5)]
    assert (events[0].prompt_tokens, events[0].completion_tokens, events[0].streamed) == (
        3,
        5,
        True,
    )
    assert registry.get_sample_value("cic_gateway_usage_send_failures_total") == 3
    assert registry.get_sample_value("cic_gateway_usage_events_sent_total") == 5
    assert sender.buffered == 0


async def test_events_are_batched(stub, services: FakeServices) -> None:
    sender = _sender(stub, CollectorRegistry(), flush_interval_s=60, batch_size=4)
    await sender.start()
    try:
        for i in range(8):
            sender.emit(record(f"req_{i}"))
        await services.billing.wait_for_events(8)
    finally:
        await sender.close(1.0)
    assert services.billing.batches == [4, 4]


async def test_close_flushes_what_is_buffered(stub, services: FakeServices) -> None:
    sender = _sender(stub, CollectorRegistry(), flush_interval_s=60)
    await sender.start()
    for i in range(3):
        sender.emit(record(f"req_{i}"))
    assert services.billing.events == []
    await sender.close(2.0)
    assert [e.request_id for e in services.billing.events] == ["req_0", "req_1", "req_2"]


async def test_close_gives_up_when_billing_stays_down(stub, services: FakeServices) -> None:
    registry = CollectorRegistry()
    sender = _sender(stub, registry, flush_interval_s=60)
    services.billing.fail_next = 10_000
    await sender.start()
    sender.emit(record("req_lost"))
    await sender.close(0.2)
    assert services.billing.events == []
    assert (
        registry.get_sample_value("cic_gateway_usage_events_dropped_total", {"reason": "shutdown"})
        == 1
    )


async def test_only_refused_events_are_given_up(stub, services: FakeServices) -> None:
    registry = CollectorRegistry()
    sender = _sender(stub, registry)
    await sender.start()
    try:
        sender.emit(record("req_ok_1"))
        sender.emit(record("req_bad", tenant_id=""))
        sender.emit(record("req_ok_2"))
        events = await services.billing.wait_for_events(2)
    finally:
        await sender.close(1.0)
    assert sorted(e.request_id for e in events) == ["req_ok_1", "req_ok_2"]
    assert (
        registry.get_sample_value("cic_gateway_usage_events_dropped_total", {"reason": "rejected"})
        == 1
    )


async def test_a_full_buffer_drops_new_events(stub) -> None:
    registry = CollectorRegistry()
    sender = _sender(stub, registry, max_buffered=2)
    for i in range(3):
        sender.emit(record(f"req_{i}"))
    assert sender.buffered == 2
    assert (
        registry.get_sample_value(
            "cic_gateway_usage_events_dropped_total", {"reason": "buffer_full"}
        )
        == 1
    )
    await sender.close(1.0)
