"""GetUsage: a tenant's totals and per-model sums over finished_at in [start, end)."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, record, timestamp, usage_event

DAY_1 = datetime(2025, 3, 1, tzinfo=UTC)
DAY_2 = datetime(2025, 3, 2, tzinfo=UTC)
DAY_3 = datetime(2025, 3, 3, tzinfo=UTC)


def _usage_request(
    tenant_id: str, start: datetime | None = None, end: datetime | None = None
) -> billing_pb2.GetUsageRequest:
    request = billing_pb2.GetUsageRequest(tenant_id=tenant_id)
    if start is not None:
        request.start.CopyFrom(timestamp(start))
    if end is not None:
        request.end.CopyFrom(timestamp(end))
    return request


def _sums(usage: billing_pb2.GetUsageResponse | billing_pb2.ModelUsage) -> tuple[int, ...]:
    return (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.cost_micro_usd)


async def test_totals_and_by_model(billing: RunningBilling) -> None:
    await record(
        billing,
        usage_event("r1", prompt_tokens=1_000_000, completion_tokens=0),  # 100_000
        usage_event("r2", prompt_tokens=0, completion_tokens=1_000_000),  # 200_000
        usage_event("r3", model="other", prompt_tokens=5, completion_tokens=0),  # 2.5 -> 3
        usage_event("r4", tenant_id="tenant-b", prompt_tokens=7, completion_tokens=7),
    )
    usage = await billing.stub.GetUsage(_usage_request("tenant-a"))
    assert usage.tenant_id == "tenant-a"
    assert _sums(usage) == (3, 1_000_005, 1_000_000, 300_003)
    assert [(m.model, *_sums(m)) for m in usage.by_model] == [
        ("cic-sim-small", 2, 1_000_000, 1_000_000, 300_000),
        ("other", 1, 5, 0, 3),
    ]


async def test_tenant_without_usage_gets_zeros(billing: RunningBilling) -> None:
    await record(billing, usage_event("r1"))
    usage = await billing.stub.GetUsage(_usage_request("nobody"))
    assert (usage.tenant_id, _sums(usage), list(usage.by_model)) == ("nobody", (0, 0, 0, 0), [])


async def test_time_range_is_start_inclusive_end_exclusive(billing: RunningBilling) -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    await record(
        billing,
        usage_event("day1", finished_at=DAY_1, prompt_tokens=1),
        usage_event("day2", finished_at=DAY_2, prompt_tokens=10),
        usage_event("day2-end", finished_at=DAY_3 - timedelta(microseconds=1), prompt_tokens=100),
        usage_event("day3", finished_at=DAY_3, prompt_tokens=1_000),
        usage_event("future", finished_at=future, prompt_tokens=10_000),
    )

    async def prompt_tokens(start: datetime | None, end: datetime | None) -> int:
        return (await billing.stub.GetUsage(_usage_request("tenant-a", start, end))).prompt_tokens

    assert await prompt_tokens(DAY_2, DAY_3) == 110
    assert await prompt_tokens(None, DAY_2) == 1
    assert await prompt_tokens(DAY_2, None) == 1_110  # unset end: now, so not the future event
    assert await prompt_tokens(None, None) == 1_111
    assert await prompt_tokens(DAY_2, DAY_2) == 0
    assert await prompt_tokens(None, future + timedelta(seconds=1)) == 11_111


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_usage_request(""), "tenant_id is empty"),
        (_usage_request("tenant-a", DAY_2, DAY_1), "end is before start"),
        (_usage_request("a\x00"), "tenant_id contains a NUL character"),
    ],
    ids=["empty-tenant", "end-before-start", "nul-in-tenant"],
)
async def test_bad_requests_are_invalid_argument(
    billing: RunningBilling, request_: billing_pb2.GetUsageRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.GetUsage(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message
