"""A batch with a bad event is refused whole: INVALID_ARGUMENT naming the event, nothing written."""

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, record, usage_event


def _spoil(field: str, value: object) -> billing_pb2.UsageEvent:
    event = usage_event("bad")
    if value is None:
        event.ClearField(field)  # type: ignore[arg-type]
    elif isinstance(value, Timestamp):
        getattr(event, field).CopyFrom(value)
    else:
        setattr(event, field, value)
    return event


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("request_id", "", "events[1].request_id is empty"),
        ("tenant_id", "", "events[1].tenant_id is empty"),
        ("model", "", "events[1].model is empty"),
        ("prompt_tokens", -1, "events[1].prompt_tokens is negative"),
        ("completion_tokens", -5, "events[1].completion_tokens is negative"),
        ("finished_at", None, "events[1].finished_at is not set"),
        ("finished_at", Timestamp(seconds=1, nanos=-1), "events[1].finished_at is not a valid"),
        ("tenant_id", "a\x00b", "events[1].tenant_id contains a NUL character"),
        ("node_id", "\x00", "events[1].node_id contains a NUL character"),
    ],
    ids=[
        "empty-request-id",
        "empty-tenant",
        "empty-model",
        "negative-prompt",
        "negative-completion",
        "unset-finished-at",
        "invalid-finished-at",
        "nul-in-tenant",
        "nul-in-node",
    ],
)
async def test_bad_event_rejects_the_whole_batch(
    billing: RunningBilling, field: str, value: object, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(billing, usage_event("good"), _spoil(field, value), usage_event("later"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(message)
    assert await billing.ledger_rows() == []
    assert billing.metric("cic_billing_rejected_batches_total", {"reason": "invalid"}) == 1
    assert billing.metric("cic_billing_events_recorded_total") == 0


async def test_cost_beyond_64_bits_is_rejected(billing: RunningBilling) -> None:
    huge = usage_event("huge", model="no-such-model", completion_tokens=2**63 - 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(billing, huge)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("events[0].prompt_tokens")
    assert await billing.ledger_rows() == []


async def test_a_batch_costing_more_than_64_bits_in_total_is_rejected(
    billing: RunningBilling,
) -> None:
    # Each fits in 64 bits (the default price, 1.5 micro-USD a completion token: 5e18); the sum not.
    tokens = 3_333_333_333_333_333_334
    events = [
        usage_event(f"big-{i}", model="no-such-model", prompt_tokens=0, completion_tokens=tokens)
        for i in range(2)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(billing, *events)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in total" in (err.value.details() or "")
    assert await billing.ledger_rows() == []
    one = await record(billing, events[0])
    assert one.recorded == 1


async def test_batch_limit(billing: RunningBilling) -> None:
    moment = datetime(2025, 1, 15, tzinfo=UTC)
    events = [usage_event(f"req-{i:05}", finished_at=moment) for i in range(5_001)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(billing, *events)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 5000" in (err.value.details() or "")
    assert await billing.ledger_rows() == []

    reply = await record(billing, *events[:5_000])
    assert (reply.recorded, reply.duplicates) == (5_000, 0)
