"""RecordUsage through the real gRPC server against the real Postgres ledger."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import (
    RunningBilling,
    record,
    running_billing,
    timestamp,
    usage_event,
)


async def test_events_are_stored_with_every_field(billing: RunningBilling) -> None:
    event = usage_event(
        "req-1", prompt_tokens=12, completion_tokens=34, environment_id="env-1", region="nowhere"
    )
    reply = await record(billing, event)
    assert (reply.recorded, reply.duplicates) == (1, 0)
    [row] = await billing.ledger_rows()
    assert dict(row) | {"recorded_at": None} == {
        "request_id": "req-1",
        "tenant_id": "tenant-a",
        "api_key_id": "key-1",
        "model": "cic-sim-small",
        "node_id": "node-1",
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cost_micro_usd": 8,  # (12 * 100_000 + 34 * 200_000) / 1e6 = 8.0 (unknown region: 1x)
        "started_at": datetime(2025, 1, 15, 11, 59, 58, tzinfo=UTC),
        "finished_at": datetime(2025, 1, 15, 12, 0, tzinfo=UTC),
        "streamed": True,
        "status_code": 200,
        "recorded_at": None,
        "meter_report_id": None,  # no Stripe report has counted it yet
        "environment_id": "env-1",
        "region": "nowhere",
        "credit_micro_usd": 0,  # the tenant has no prepaid credit
    }


async def test_empty_optional_fields_are_stored_as_null(billing: RunningBilling) -> None:
    event = billing_pb2.UsageEvent(
        request_id="req-1",
        tenant_id="tenant-a",
        model="cic-sim-small",
        finished_at=timestamp(datetime(2025, 1, 15, tzinfo=UTC)),
    )
    assert (await record(billing, event)).recorded == 1
    [row] = await billing.ledger_rows()
    assert (row["api_key_id"], row["node_id"], row["started_at"]) == (None, None, None)
    assert (row["environment_id"], row["region"]) == (None, None)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_micro_usd"]) == (0, 0, 0)


async def test_same_request_id_is_recorded_once(billing: RunningBilling) -> None:
    first = usage_event("req-a", prompt_tokens=1, completion_tokens=2)
    repeat = usage_event("req-a", prompt_tokens=100, completion_tokens=200)
    other = usage_event("req-b")
    reply = await record(billing, first, repeat, other)
    assert (reply.recorded, reply.duplicates) == (2, 1)

    retried = await record(billing, first, repeat, other)
    assert (retried.recorded, retried.duplicates) == (0, 3)

    rows = await billing.ledger_rows()
    assert [(r["request_id"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("req-a", 1, 2),  # the first event of the batch wins
        ("req-b", 10, 20),
    ]
    assert billing.metric("cic_billing_events_recorded_total") == 2
    assert billing.metric("cic_billing_duplicate_events_total") == 4
    assert billing.metric("cic_billing_batch_size_events_count") == 2
    assert billing.metric("cic_billing_batch_size_events_sum") == 6
    assert billing.metric("cic_billing_ingest_seconds_count") == 2


async def test_empty_batch_records_nothing(billing: RunningBilling) -> None:
    reply = await record(billing)
    assert (reply.recorded, reply.duplicates) == (0, 0)
    assert await billing.ledger_rows() == []


async def test_cost_is_exact_and_unpriced_models_use_the_default(billing: RunningBilling) -> None:
    cases = {
        # request id: (model, prompt, completion, expected micro-dollars)
        "half-rounds-up": ("cic-sim-small", 5, 0, 1),
        "below-half": ("cic-sim-small", 4, 0, 0),
        "rounded-on-sum": ("cic-sim-small", 3, 1, 1),
        "one-dollar-fifty": ("cic-sim-small", 5_000_000, 5_000_000, 1_500_000),
        "huge": ("cic-sim-small", 123_456_789_012_345, 0, 12_345_678_901_235),
        # '*' is $0.50 / $1.50 per million: (1 * 500_000 + 1 * 1_500_000) / 1e6 = 2
        "default-price": ("no-such-model", 1, 1, 2),
        "default-price-rounding": ("no-such-model", 1, 0, 1),  # 0.5 -> 1
    }
    events = [
        usage_event(rid, model=model, prompt_tokens=prompt, completion_tokens=completion)
        for rid, (model, prompt, completion, _) in cases.items()
    ]
    assert (await record(billing, *events)).recorded == len(cases)
    costs = {row["request_id"]: row["cost_micro_usd"] for row in await billing.ledger_rows()}
    assert costs == {rid: expected for rid, (*_, expected) in cases.items()}


async def test_price_changes_do_not_rewrite_history(database_url: str) -> None:
    async with running_billing(database_url, PRICE_REFRESH_S="0") as billing:
        await record(billing, usage_event("before", prompt_tokens=10, completion_tokens=0))
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE billing.model_prices SET prompt_micro_usd_per_mtok = 300000"
                " WHERE model = 'cic-sim-small'"
            )
        finally:
            await conn.close()
        await record(billing, usage_event("after", prompt_tokens=10, completion_tokens=0))
        costs = {row["request_id"]: row["cost_micro_usd"] for row in await billing.ledger_rows()}
    assert costs == {"before": 1, "after": 3}


async def test_prices_are_cached_between_refreshes(billing: RunningBilling) -> None:
    conn = await asyncpg.connect(billing.database_url)
    try:
        await conn.execute("DELETE FROM billing.model_prices")
        reply = await record(billing, usage_event("req-1", prompt_tokens=10, completion_tokens=0))
        assert reply.recorded == 1  # priced from the cache: no query per batch
        await billing.service.prices.reload()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(billing, usage_event("req-2"))
    finally:
        await conn.close()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'cic-sim-small'" in (err.value.details() or "")
    assert [row["request_id"] for row in await billing.ledger_rows()] == ["req-1"]
    assert billing.metric("cic_billing_rejected_batches_total", {"reason": "no_price"}) == 1


async def test_concurrent_overlapping_batches_record_each_id_once(billing: RunningBilling) -> None:
    # Large batches sharing ids in opposite orders, at once: without the ledger inserting in one
    # fixed order, Postgres would see them deadlock on each other's rows.
    ids = [f"req-{i:04}" for i in range(4000)]
    forward = [usage_event(rid) for rid in ids[:3000]]
    backward = [usage_event(rid) for rid in reversed(ids[1000:])]
    replies = await asyncio.gather(*(record(billing, *batch) for batch in (forward, backward) * 3))
    assert sum(r.recorded for r in replies) == 4000
    assert sum(r.recorded + r.duplicates for r in replies) == 3 * (3000 + 3000)
    assert [row["request_id"] for row in await billing.ledger_rows()] == ids


async def test_lost_database_answers_unavailable(billing: RunningBilling) -> None:
    await billing.service.pool.close()
    with pytest.raises(grpc.aio.AioRpcError) as recording:
        await record(billing, usage_event("req-1"))
    with pytest.raises(grpc.aio.AioRpcError) as reading:
        await billing.stub.GetUsage(billing_pb2.GetUsageRequest(tenant_id="tenant-a"))
    assert recording.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reading.value.code() == grpc.StatusCode.UNAVAILABLE
    assert billing.metric("cic_billing_rejected_batches_total", {"reason": "unavailable"}) == 1


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 22, 20, 15, 1, 123_456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
async def test_times_are_stored_to_the_microsecond(
    billing: RunningBilling, moment: datetime
) -> None:
    event = usage_event("req-t")
    event.started_at.CopyFrom(timestamp(moment))
    event.finished_at.CopyFrom(timestamp(moment))
    event.finished_at.nanos += 999  # below a microsecond: truncated, as ToDatetime does
    await record(billing, event)
    [row] = await billing.ledger_rows()
    assert (row["started_at"], row["finished_at"]) == (moment, moment)
