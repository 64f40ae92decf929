"""Stripe webhooks: verified with the SDK, each event id processed once, dispatched by type.

The gateway hands over the raw body and the ``Stripe-Signature`` header. The event is verified
with ``stripe.Webhook.construct_event`` (which refuses a timestamp older than the tolerance) and
refused as well when its timestamp is further than the tolerance in the future. Then its id is
inserted first of all (the primary key of ``stripe_events``): a redelivery finds it there and
changes nothing. Three types change the tenant whose Stripe customer the event names:

- ``invoice.payment_failed`` and ``customer.subscription.deleted`` suspend it,
- ``invoice.paid`` reactivates it;

every other type is stored and acknowledged. An event older than the last one applied to the
same tenant (Stripe does not promise order) is stored and changes nothing. Billing answers the
status; the gateway, which owns tenants, applies it and confirms, and until it has confirmed a
redelivery of the same event answers the same status again (so a failure in between loses
nothing).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe

STATUS_BY_TYPE = {
    "invoice.payment_failed": "suspended",
    "customer.subscription.deleted": "suspended",
    "invoice.paid": "active",
}


class BadWebhook(ValueError):
    """The delivery is not a verified Stripe event; the message says why."""


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    event_id: str
    event_type: str
    duplicate: bool
    tenant_id: str = ""
    tenant_status: str = ""
    first: bool = True  # False for a redelivery (of an event recorded before)


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    id: str
    type: str
    created: datetime
    customer_id: str | None
    payload: str


def _signed_at(signature: str) -> int:
    for part in signature.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "t":
            return int(value)
    raise BadWebhook("the Stripe-Signature header has no timestamp")


def _customer_of(obj: Any) -> str | None:
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


def verify(payload: bytes, signature: str, secret: str, tolerance_s: int) -> VerifiedEvent:
    """The event, if the signature is Stripe's and its timestamp within ``tolerance_s`` of now
    either way; :class:`BadWebhook` otherwise."""
    try:
        stripe.Webhook.construct_event(payload, signature, secret, tolerance=tolerance_s)
    except stripe.SignatureVerificationError as err:
        raise BadWebhook(f"signature not verified: {err.user_message or err}") from None
    except Exception:  # signed, but not UTF-8, not JSON or not an event object
        raise BadWebhook("the body is not a JSON Stripe event") from None
    if _signed_at(signature) > time.time() + tolerance_s:
        raise BadWebhook(f"the signature's timestamp is more than {tolerance_s}s in the future")
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise BadWebhook("the body is not a JSON Stripe event")
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    if not isinstance(event_id, str) or not event_id or "\x00" in event_id:
        raise BadWebhook("the event has no id")
    if not isinstance(event_type, str) or not event_type or "\x00" in event_type:
        raise BadWebhook("the event has no type")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created < 2**40:
        raise BadWebhook("the event has no valid created time")
    inner = data.get("data")
    obj = inner.get("object") if isinstance(inner, dict) else None
    return VerifiedEvent(
        id=event_id,
        type=event_type,
        created=datetime.fromtimestamp(created, UTC),
        customer_id=_customer_of(obj),
        payload=payload.decode("utf-8").replace("\\u0000", "\\ufffd"),
    )


_INSERT = """
INSERT INTO stripe_events (id, type, created, customer_id, payload)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, event: VerifiedEvent) -> WebhookOutcome:
        """Stores the event once and decides what it does to its tenant."""
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                _INSERT, event.id, event.type, event.created, event.customer_id, event.payload
            )
            if fresh is None:
                return await self._redelivered(conn, event)
            tenant_id, status = await self._dispatch(conn, event)
            await conn.execute(
                "UPDATE stripe_events SET tenant_id = $2, tenant_status = $3,"
                " applied_at = CASE WHEN $3 = '' THEN now() END WHERE id = $1",
                event.id,
                tenant_id,
                status,
            )
        return WebhookOutcome(event.id, event.type, False, tenant_id or "", status)

    async def _dispatch(
        self, conn: asyncpg.Connection, event: VerifiedEvent
    ) -> tuple[str | None, str]:
        status = STATUS_BY_TYPE.get(event.type, "")
        if not status or event.customer_id is None:
            return None, ""
        tenant_id = await conn.fetchval(
            "SELECT tenant_id FROM stripe_customers WHERE customer_id = $1", event.customer_id
        )
        if tenant_id is None:
            return None, ""
        newest = await conn.fetchval(
            "SELECT event_created FROM tenant_billing_status WHERE tenant_id = $1 FOR UPDATE",
            tenant_id,
        )
        if newest is not None and event.created < newest:
            return tenant_id, ""  # a newer event decided already
        await conn.execute(
            "INSERT INTO tenant_billing_status (tenant_id, status, event_id, event_created)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET"
            " status = EXCLUDED.status, event_id = EXCLUDED.event_id,"
            " event_created = EXCLUDED.event_created, updated_at = now()",
            tenant_id,
            status,
            event.id,
            event.created,
        )
        return tenant_id, status

    async def _redelivered(self, conn: asyncpg.Connection, event: VerifiedEvent) -> WebhookOutcome:
        row = await conn.fetchrow(
            "SELECT e.tenant_id, e.tenant_status, e.applied_at, s.event_id AS newest"
            " FROM stripe_events e LEFT JOIN tenant_billing_status s USING (tenant_id)"
            " WHERE e.id = $1 FOR UPDATE OF e",
            event.id,
        )
        assert row is not None
        if row["applied_at"] is None and row["newest"] == event.id:
            return WebhookOutcome(
                event.id, event.type, False, row["tenant_id"], row["tenant_status"], first=False
            )
        return WebhookOutcome(event.id, event.type, True, first=False)

    async def confirm(self, event_id: str) -> bool:
        """Marks the event applied; False when no such event was recorded."""
        found = await self._pool.fetchval(
            "UPDATE stripe_events SET applied_at = coalesce(applied_at, now()) WHERE id = $1"
            " RETURNING id",
            event_id,
        )
        return found is not None
