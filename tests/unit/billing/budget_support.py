"""Events of a chosen cost and credit grants, for the credit and budget tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, timestamp, usage_event

TENANT = "tenant-credit"


def costing(request_id: str, micro_usd: int, tenant_id: str = TENANT) -> billing_pb2.UsageEvent:
    """An event of ``cic-sim-small`` ($0.10 per million prompt tokens) costing ``micro_usd``."""
    return usage_event(
        request_id,
        tenant_id=tenant_id,
        prompt_tokens=micro_usd * 10,
        completion_tokens=0,
        finished_at=datetime.now(UTC),
    )


async def grant(
    billing: RunningBilling,
    micro_usd: int,
    expires_in: timedelta | None = None,
    kind: str = "promotional",
    tenant_id: str = TENANT,
) -> billing_pb2.CreditGrant:
    request = billing_pb2.CreateCreditGrantRequest(
        tenant_id=tenant_id, kind=kind, amount_micro_usd=micro_usd
    )
    if expires_in is not None:
        request.expires_at.CopyFrom(timestamp(datetime.now(UTC) + expires_in))
    return await billing.stub.CreateCreditGrant(request)
