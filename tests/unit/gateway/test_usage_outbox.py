"""The usage outbox against real Redis and a real gRPC server: events go through the Redis stream
to billing, are retried while billing is down, survive a stop or a crash (another consumer takes
them over), and only events billing refuses as malformed are set aside, in the dead-letter
stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_common.grpc_client import create_channel
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.usage import GROUP, OutboxOptions, UsageOutbox, UsageRecord
from tests.support.net import free_port
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


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


def _outbox(
    redis: Redis, stub, prefix: str, registry: CollectorRegistry | None = None, **options
) -> UsageOutbox:
    options.setdefault("block_s", 0.02)
    options.setdefault("backoff_initial_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    return UsageOutbox(
        redis,
        stub,
        GatewayMetrics(registry or CollectorRegistry()),
        OutboxOptions(prefix=prefix, **options),
    )


async def _pending(redis: Redis, outbox: UsageOutbox) -> int:
    """Entries read by a consumer and not acknowledged yet (0 before the group exists)."""
    if not await redis.exists(outbox.stream):
        return 0
    groups = await redis.xinfo_groups(outbox.stream)
    return sum(g["pending"] for g in groups)


async def _stream_empty(redis: Redis, outbox: UsageOutbox) -> bool:
    return await redis.xlen(outbox.stream) == 0 and await _pending(redis, outbox) == 0


async def test_events_go_through_the_stream_to_billing(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    registry = CollectorRegistry()
    outbox = _outbox(redis, stub, redis_prefix, registry, batch_size=4)
    for i in range(8):
        outbox.emit(record(f"req_{i}"))
    assert outbox.buffered == 8
    await outbox.start()
    try:
        events = await services.billing.wait_for_events(8)
    finally:
        await outbox.close(2.0)
    assert [e.request_id for e in events] == [f"req_{i}" for i in range(8)]
    assert (events[0].prompt_tokens, events[0].completion_tokens, events[0].streamed) == (
        3,
        5,
        True,
    )
    assert services.billing.batches == [4, 4]
    assert await _stream_empty(redis, outbox)
    assert registry.get_sample_value("cic_gateway_usage_events_sent_total") == 8


@pytest.mark.parametrize(
    "failure", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION]
)
async def test_events_are_retried_until_billing_takes_them(
    redis: Redis, stub, services: FakeServices, redis_prefix: str, failure: grpc.StatusCode
) -> None:
    registry = CollectorRegistry()
    outbox = _outbox(redis, stub, redis_prefix, registry)
    services.billing.fail_next = 3
    services.billing.fail_code = failure
    await outbox.start()
    try:
        for i in range(5):
            outbox.emit(record(f"req_{i}"))
        events = await services.billing.wait_for_events(5)
    finally:
        await outbox.close(2.0)
    assert sorted(e.request_id for e in events) == [f"req_{i}" for i in range(5)]
    assert registry.get_sample_value("cic_gateway_usage_send_failures_total") == 3
    assert await _stream_empty(redis, outbox)


async def test_what_billing_did_not_take_before_a_stop_is_delivered_after_a_restart(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    services.billing.fail_next = 10_000  # billing is down
    first = _outbox(redis, stub, redis_prefix)
    await first.start()
    for i in range(3):
        first.emit(record(f"req_{i}"))
    while await redis.xlen(first.stream) < 3:
        await asyncio.sleep(0.01)
    await first.close(0.5)
    assert services.billing.events == []
    assert await redis.xlen(first.stream) == 3  # durable: nothing lost, nothing sent

    services.billing.fail_next = 0  # billing is back; a new process (a new consumer) starts
    second = _outbox(redis, stub, redis_prefix, claim_idle_s=0.05)
    assert second.consumer != first.consumer
    await second.start()
    try:
        events = await services.billing.wait_for_events(3)
        while not await _stream_empty(redis, second):
            await asyncio.sleep(0.01)
    finally:
        await second.close(2.0)
    assert sorted(e.request_id for e in events) == ["req_0", "req_1", "req_2"]


async def test_a_crashed_consumers_entries_are_taken_over(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    services.billing.fail_next = 10_000
    crashed = _outbox(redis, stub, redis_prefix)
    await crashed.start()
    for i in range(4):
        crashed.emit(record(f"req_{i}"))
    while await _pending(redis, crashed) < 4:
        await asyncio.sleep(0.01)
    for task in (crashed._appender, crashed._forwarder):  # a crash: no goodbye, no ack
        assert task is not None
        task.cancel()
    services.billing.fail_next = 0

    survivor = _outbox(redis, stub, redis_prefix, claim_idle_s=0.1)
    await survivor.start()
    try:
        events = await services.billing.wait_for_events(4)
        while not await _stream_empty(redis, survivor):
            await asyncio.sleep(0.01)
    finally:
        await survivor.close(2.0)
    assert sorted(e.request_id for e in events) == [f"req_{i}" for i in range(4)]


async def test_replicas_share_the_stream_and_deliver_each_event_once(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    replicas = [_outbox(redis, stub, redis_prefix, batch_size=10) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        for i in range(200):
            replicas[i % 2].emit(record(f"req_{i}"))
        await services.billing.wait_for_events(200)
        while not await _stream_empty(redis, replicas[0]):
            await asyncio.sleep(0.01)
    finally:
        for replica in replicas:
            await replica.close(2.0)
    assert sum(services.billing.batches) == 200  # no event sent twice
    consumers = await redis.xinfo_consumers(replicas[0].stream, GROUP)
    assert len(consumers) == 2


async def test_only_refused_events_are_set_aside(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    registry = CollectorRegistry()
    outbox = _outbox(redis, stub, redis_prefix, registry)
    outbox.emit(record("req_ok_1"))
    outbox.emit(record("req_bad", tenant_id=""))
    outbox.emit(record("req_ok_2"))
    await outbox.start()
    try:
        events = await services.billing.wait_for_events(2)
        while not await _stream_empty(redis, outbox):
            await asyncio.sleep(0.01)
    finally:
        await outbox.close(2.0)
    assert sorted(e.request_id for e in events) == ["req_ok_1", "req_ok_2"]
    [(_, fields)] = await redis.xrange(outbox.dead_letters)
    assert billing_pb2.UsageEvent.FromString(fields[b"event"]).request_id == "req_bad"
    assert fields[b"reason"] == b"tenant_id is required"
    assert (
        registry.get_sample_value("cic_gateway_usage_events_dropped_total", {"reason": "rejected"})
        == 1
    )


async def test_an_entry_that_is_not_an_event_is_set_aside(
    redis: Redis, stub, services: FakeServices, redis_prefix: str
) -> None:
    outbox = _outbox(redis, stub, redis_prefix)
    await redis.xadd(outbox.stream, {b"event": b"\xff not protobuf"})
    outbox.emit(record("req_ok"))
    await outbox.start()
    try:
        await services.billing.wait_for_events(1)
        while not await _stream_empty(redis, outbox):
            await asyncio.sleep(0.01)
    finally:
        await outbox.close(2.0)
    [(_, fields)] = await redis.xrange(outbox.dead_letters)
    assert fields[b"reason"] == b"not a usage event"


async def test_with_redis_down_close_sends_straight_to_billing(
    stub, services: FakeServices, redis_prefix: str
) -> None:
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    outbox = _outbox(unreachable, stub, redis_prefix)
    await outbox.start()
    try:
        outbox.emit(record("req_1"))
        outbox.emit(record("req_2"))
        await asyncio.sleep(0.05)
        assert services.billing.events == []
    finally:
        await outbox.close(2.0)
        await unreachable.aclose()
    assert [e.request_id for e in services.billing.events] == ["req_1", "req_2"]


async def test_with_redis_and_billing_down_close_counts_the_loss(
    stub, services: FakeServices, redis_prefix: str
) -> None:
    registry = CollectorRegistry()
    services.billing.fail_next = 10_000
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    outbox = _outbox(unreachable, stub, redis_prefix, registry)
    await outbox.start()
    outbox.emit(record("req_lost"))
    await outbox.close(0.5)
    await unreachable.aclose()
    assert (
        registry.get_sample_value("cic_gateway_usage_events_dropped_total", {"reason": "shutdown"})
        == 1
    )


async def test_a_full_buffer_drops_new_events(stub, redis_prefix: str) -> None:
    registry = CollectorRegistry()
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    outbox = _outbox(unreachable, stub, redis_prefix, registry, max_buffered=2)
    for i in range(3):
        outbox.emit(record(f"req_{i}"))
    assert outbox.buffered == 2
    assert (
        registry.get_sample_value(
            "cic_gateway_usage_events_dropped_total", {"reason": "buffer_full"}
        )
        == 1
    )
    await unreachable.aclose()
