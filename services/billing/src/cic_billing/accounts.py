"""A tenant's Stripe billing state, read from what billing keeps: its Stripe customer, and the
status that the last status webhook applied to it (see :mod:`cic_billing.webhooks`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from cic.billing.v1 import billing_pb2

MAX_TENANT_ID_CHARS = 200
# The billing state each status event leaves the tenant in.
STATUS_BY_EVENT = {
    "invoice.paid": billing_pb2.BILLING_STATUS_ACTIVE,
    "invoice.payment_failed": billing_pb2.BILLING_STATUS_PAST_DUE,
    "customer.subscription.deleted": billing_pb2.BILLING_STATUS_CANCELED,
}

_ACCOUNT = """
SELECT c.customer_id, e.type AS event_type, s.event_created,
       (SELECT max(f.created) FROM stripe_events f
        WHERE f.customer_id = c.customer_id AND f.type = 'invoice.payment_failed')
       AS last_payment_failed_at
FROM (SELECT $1::text AS tenant_id) t
LEFT JOIN stripe_customers c USING (tenant_id)
LEFT JOIN tenant_billing_status s USING (tenant_id)
LEFT JOIN stripe_events e ON e.id = s.event_id
"""


@dataclass(frozen=True, slots=True)
class Account:
    customer_id: str | None
    status_event_type: str | None  # the type of the event that set the status; None: none yet
    status_changed_at: datetime | None  # when Stripe created that event
    last_payment_failed_at: datetime | None


def tenant_id_problem(tenant_id: str) -> str | None:
    """Why ``tenant_id`` cannot name a tenant, or None."""
    if not tenant_id:
        return "tenant_id is empty"
    if len(tenant_id) > MAX_TENANT_ID_CHARS:
        return f"tenant_id is longer than {MAX_TENANT_ID_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in tenant_id):
        return "tenant_id contains a control character"
    return None


async def read_account(pool: asyncpg.Pool, tenant_id: str) -> Account:
    row = await pool.fetchrow(_ACCOUNT, tenant_id)
    assert row is not None  # the one-row subquery always yields a row
    return Account(
        customer_id=row["customer_id"],
        status_event_type=row["event_type"],
        status_changed_at=row["event_created"],
        last_payment_failed_at=row["last_payment_failed_at"],
    )
