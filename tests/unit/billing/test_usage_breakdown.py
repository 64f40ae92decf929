"""GetUsage with group_by: the breakdown rows come from the same query as the totals and the
per-model sums, and add up to the totals."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, record, usage_event

JAN_31_LATE = datetime(2025, 1, 31, 23, 30, tzinfo=UTC)
FEB_1_EARLY = datetime(2025, 2, 1, 0, 10, tzinfo=UTC)
FEB_1_LATER = datetime(2025, 2, 1, 0, 50, tzinfo=UTC)
FEB_2 = datetime(2025, 2, 2, 9, 0, tzinfo=UTC)


async def _usage(billing: RunningBilling, group_by: int) -> billing_pb2.GetUsageResponse:
    return await billing.stub.GetUsage(
        billing_pb2.GetUsageRequest(tenant_id="tenant-a", group_by=group_by)
    )


def _rows(reply: billing_pb2.GetUsageResponse) -> list[tuple[object, int, int]]:
    return [
        (
            row.period_start.ToDatetime(UTC) if row.HasField("period_start") else row.key,
            row.requests,
            row.cost_micro_usd,
        )
        for row in reply.breakdown
    ]


@pytest.fixture
async def ledger(billing: RunningBilling) -> RunningBilling:
    # cic-sim-small at $0.10 per million prompt tokens: 10 prompt tokens cost 1 micro-dollar.
    await record(
        billing,
        usage_event("a", finished_at=JAN_31_LATE, prompt_tokens=10, completion_tokens=0,
                    api_key_id="key-1", environment_id="env-prod"),
        usage_event("b", finished_at=FEB_1_EARLY, prompt_tokens=20, completion_tokens=0,
                    api_key_id="key-2", environment_id="env-prod"),
        usage_event("c", finished_at=FEB_1_LATER, prompt_tokens=30, completion_tokens=0,
                    api_key_id="key-2", environment_id="env-dev", model="other"),
        usage_event("d", finished_at=FEB_2, prompt_tokens=40, completion_tokens=0,
                    api_key_id="", environment_id=""),
        usage_event("other-tenant", tenant_id="tenant-b", finished_at=FEB_2),
    )  # fmt: skip
    return billing


async def test_totals_are_the_same_with_and_without_a_breakdown(ledger: RunningBilling) -> None:
    plain = await _usage(ledger, billing_pb2.USAGE_GROUP_BY_UNSPECIFIED)
    assert list(plain.breakdown) == []
    for group_by in range(1, 7):
        grouped = await _usage(ledger, group_by)
        assert (grouped.requests, grouped.cost_micro_usd) == (plain.requests, plain.cost_micro_usd)
        assert list(grouped.by_model) == list(plain.by_model)
        assert sum(r.requests for r in grouped.breakdown) == plain.requests
        assert sum(r.cost_micro_usd for r in grouped.breakdown) == plain.cost_micro_usd


async def test_each_grouping(ledger: RunningBilling) -> None:
    # "other" has only the "*" default price: $0.50 per million prompt tokens (30 -> 15).
    expected = {
        billing_pb2.USAGE_GROUP_BY_MODEL: [("cic-sim-small", 3, 7), ("other", 1, 15)],
        billing_pb2.USAGE_GROUP_BY_KEY: [("", 1, 4), ("key-1", 1, 1), ("key-2", 2, 17)],
        billing_pb2.USAGE_GROUP_BY_ENVIRONMENT: [
            ("", 1, 4),
            ("env-dev", 1, 15),
            ("env-prod", 2, 3),
        ],
        billing_pb2.USAGE_GROUP_BY_HOUR: [
            (datetime(2025, 1, 31, 23, tzinfo=UTC), 1, 1),
            (datetime(2025, 2, 1, 0, tzinfo=UTC), 2, 17),
            (datetime(2025, 2, 2, 9, tzinfo=UTC), 1, 4),
        ],
        billing_pb2.USAGE_GROUP_BY_DAY: [
            (datetime(2025, 1, 31, tzinfo=UTC), 1, 1),
            (datetime(2025, 2, 1, tzinfo=UTC), 2, 17),
            (datetime(2025, 2, 2, tzinfo=UTC), 1, 4),
        ],
        billing_pb2.USAGE_GROUP_BY_MONTH: [
            (datetime(2025, 1, 1, tzinfo=UTC), 1, 1),
            (datetime(2025, 2, 1, tzinfo=UTC), 3, 21),
        ],
    }
    for group_by, rows in expected.items():
        assert _rows(await _usage(ledger, group_by)) == rows, group_by


async def test_an_unknown_grouping_is_refused(billing: RunningBilling) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _usage(billing, 99)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "group_by is not a known grouping"
