"""The usage page's billing card: the tenant's Stripe billing state from billing's
``GetBillingAccount``, and the Stripe customer-portal session behind its "Manage billing" form
(``CreatePortalSession``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc

# Opening a portal session may take billing a customer creation and Stripe's retries with
# back-off: longer than an ordinary call.
PORTAL_TIMEOUT_S = 15.0

# Billing's status: (the pill's class, what the tenant reads).
_STATUSES = {
    billing_pb2.BILLING_STATUS_ACTIVE: ("active", "Paid"),
    billing_pb2.BILLING_STATUS_PAST_DUE: ("past-due", "Payment failed"),
    billing_pb2.BILLING_STATUS_CANCELED: ("canceled", "Subscription canceled"),
}


_TimeField = Literal["status_changed_at", "last_payment_failed_at"]


class BadPortalUrl(ValueError):
    """Billing answered a portal URL that is not an http(s) URL: no redirect to it."""


@dataclass(frozen=True, slots=True)
class BillingState:
    stripe_enabled: bool
    customer_id: str
    status: str  # the pill's class; "" before any status event
    status_label: str
    status_event_type: str
    status_changed_at: datetime | None
    last_payment_failed_at: datetime | None


def _time(account: billing_pb2.BillingAccount, field: _TimeField) -> datetime | None:
    if not account.HasField(field):
        return None
    stamp: Timestamp = getattr(account, field)
    return stamp.ToDatetime(tzinfo=UTC)


async def fetch(
    billing: billing_pb2_grpc.BillingServiceStub, tenant_id: str, timeout_s: float
) -> BillingState:
    account: billing_pb2.BillingAccount = await billing.GetBillingAccount(
        billing_pb2.GetBillingAccountRequest(tenant_id=tenant_id), timeout=timeout_s
    )
    status, label = _STATUSES.get(account.status, ("", ""))
    return BillingState(
        stripe_enabled=account.stripe_enabled,
        customer_id=account.customer_id,
        status=status,
        status_label=label,
        status_event_type=account.status_event_type,
        status_changed_at=_time(account, "status_changed_at"),
        last_payment_failed_at=_time(account, "last_payment_failed_at"),
    )


async def portal_url(
    billing: billing_pb2_grpc.BillingServiceStub, tenant_id: str, return_url: str, timeout_s: float
) -> str:
    """A new portal session's URL for the tenant; :class:`BadPortalUrl` when billing answers
    something the browser must not be sent to."""
    reply: billing_pb2.CreatePortalSessionResponse = await billing.CreatePortalSession(
        billing_pb2.CreatePortalSessionRequest(tenant_id=tenant_id, return_url=return_url),
        timeout=max(timeout_s, PORTAL_TIMEOUT_S),
    )
    parts = urlsplit(reply.url)
    unsafe = any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in reply.url)
    if parts.scheme not in ("https", "http") or not parts.netloc or unsafe:
        raise BadPortalUrl(reply.url[:100])
    return reply.url
