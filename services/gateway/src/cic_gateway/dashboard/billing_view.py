"""The usage page's billing card: the tenant's Stripe billing state from billing's
``GetBillingAccount``, the Stripe customer-portal session behind its "Manage billing" form
(``CreatePortalSession``), and this month's spend, credit balance, budget and invoices (the
figures of ``GET /v1/billing``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_gateway import tenant_billing

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


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    number: str
    status: str
    created: datetime
    amount_due_usd: float
    amount_paid_usd: float
    url: str | None  # an https:// link to Stripe's page of it, else None


@dataclass(frozen=True, slots=True)
class MonthMoney:
    period_start: datetime
    spent_micro_usd: int
    credit_balance_micro_usd: int
    limit_micro_usd: int | None
    blocked_reason: str
    prepaid: bool
    invoices: list[InvoiceRow]
    invoices_available: bool


def _safe_link(url: str) -> str | None:
    parts = urlsplit(url)
    unsafe = any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    return url if parts.scheme == "https" and parts.netloc and not unsafe else None


async def fetch_money(
    billing: billing_pb2_grpc.BillingServiceStub, tenant_id: str, timeout_s: float
) -> MonthMoney:
    """This month's spend, credit balance and budget, and the invoices (GET /v1/billing's)."""
    found = await tenant_billing.fetch(billing, tenant_id, "", timeout_s)
    spend, budget = found.spend, found.spend.budget
    return MonthMoney(
        period_start=spend.period_start.ToDatetime(tzinfo=UTC),
        spent_micro_usd=spend.spent_micro_usd,
        credit_balance_micro_usd=spend.credit_balance_micro_usd,
        limit_micro_usd=(
            budget.monthly_limit_micro_usd if budget.HasField("monthly_limit_micro_usd") else None
        ),
        blocked_reason=budget.blocked_reason,
        prepaid=budget.prepaid,
        invoices=[
            InvoiceRow(
                number=i.number or i.id,
                status=i.status,
                created=i.created.ToDatetime(tzinfo=UTC),
                amount_due_usd=tenant_billing.cents(i.amount_due_cents, i.currency),
                amount_paid_usd=tenant_billing.cents(i.amount_paid_cents, i.currency),
                url=_safe_link(i.hosted_invoice_url),
            )
            for i in found.invoices.invoices
        ],
        invoices_available=found.invoices.available,
    )
