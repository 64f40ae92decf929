"""``GET /v1/billing``: a tenant's money in real time, for its ``admin`` and ``read-only`` keys.

This calendar month's (UTC) spend to date, the prepaid credit balance, the tenant's budget (and
that of the key's environment), and the newest invoices from Stripe. Billing answers the figures
from Postgres and the invoices from Stripe; Stripe off or unreachable leaves ``invoices`` empty
with ``invoices_available: false``, never an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_gateway.admin_budgets import budget_json, iso
from cic_gateway.errors import from_grpc_error
from cic_gateway.jsonio import json_response
from cic_gateway.keys import ADMIN, READ_ONLY, require_role
from cic_gateway.money import usd
from cic_gateway.resources import KEYS, SERVICES, SETTINGS

# Listing invoices may take billing a few paced, retried calls to Stripe.
INVOICES_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class TenantBilling:
    spend: billing_pb2.Spend
    invoices: billing_pb2.ListInvoicesResponse


def cents(amount: int, currency: str) -> float:
    """Stripe's amounts are in the currency's smallest unit (cents for USD)."""
    return amount / 100 if currency in ("", "usd") else float(amount)


def invoice_json(invoice: billing_pb2.Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "number": invoice.number or None,
        "status": invoice.status or None,
        "currency": invoice.currency or "usd",
        "amount_due_usd": cents(invoice.amount_due_cents, invoice.currency),
        "amount_paid_usd": cents(invoice.amount_paid_cents, invoice.currency),
        "created": iso(invoice.created),
        "hosted_invoice_url": invoice.hosted_invoice_url or None,
    }


async def fetch(
    billing: billing_pb2_grpc.BillingServiceStub,
    tenant_id: str,
    environment_id: str,
    timeout_s: float,
) -> TenantBilling:
    """The spend and the invoices, asked of billing at once."""
    spend, invoices = await asyncio.gather(
        billing.GetSpend(
            billing_pb2.GetSpendRequest(tenant_id=tenant_id, environment_id=environment_id),
            timeout=timeout_s,
        ),
        billing.ListInvoices(
            billing_pb2.ListInvoicesRequest(tenant_id=tenant_id),
            timeout=max(timeout_s, INVOICES_TIMEOUT_S),
        ),
    )
    return TenantBilling(spend, invoices)


def billing_json(found: TenantBilling) -> dict[str, Any]:
    spend = found.spend
    return {
        "object": "billing",
        "tenant_id": spend.tenant_id,
        "period_start": iso(spend.period_start),
        "period_end": iso(spend.period_end),
        "spend_usd": usd(spend.spent_micro_usd),
        "spend_micro_usd": spend.spent_micro_usd,
        "credit_balance_usd": usd(spend.credit_balance_micro_usd),
        "credit_balance_micro_usd": spend.credit_balance_micro_usd,
        "budget": budget_json(spend.budget),
        "environment_budget": (
            budget_json(spend.environment_budget) if spend.HasField("environment_budget") else None
        ),
        "invoices": [invoice_json(i) for i in found.invoices.invoices],
        "invoices_available": found.invoices.available,
    }


async def tenant_billing(request: web.Request) -> web.Response:
    auth = await request.app[KEYS].authenticate(request)
    require_role(auth, ADMIN, READ_ONLY)
    billing, timeout_s = request.app[SERVICES].billing, request.app[SETTINGS].grpc_timeout_s
    try:
        found = await fetch(billing, auth.tenant_id, auth.environment.id, timeout_s)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    return json_response(billing_json(found))
