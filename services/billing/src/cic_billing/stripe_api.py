"""Billing's calls to Stripe, through the real ``stripe`` SDK (``StripeClient``), paced under
Stripe's rate limits and retried with exponential back-off on 429, 5xx and network errors.

The SDK's own retries are off (``max_network_retries=0``): every attempt is made here, so that
the pacing counts each one and a 429 is retried too (the SDK would not). A meter event that
Stripe refuses because its identifier already exists counts as delivered.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import stripe

from cic_billing.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
DUPLICATE_IDENTIFIER = "An event already exists with identifier"


class Delivery(enum.Enum):
    SENT = "sent"
    DUPLICATE = "duplicate"  # Stripe already had it: delivered
    RETRY_LATER = "retry_later"  # 429, 5xx or the network, after every attempt
    REFUSED = "refused"  # any other refusal: retrying the same request cannot help


@dataclass(frozen=True, slots=True)
class MeterResult:
    delivery: Delivery
    error: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceSummary:
    id: str
    number: str
    status: str
    amount_due_cents: int
    amount_paid_cents: int
    currency: str
    created: datetime
    hosted_invoice_url: str


class TransientStripeError(Exception):
    """Stripe answered 429 or 5xx, or could not be reached, on every attempt."""


class Pacer:
    """Spaces calls at least ``1 / rate`` seconds apart, across every task that uses it."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate_per_s
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def wait(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval  # taken before sleeping: no await in between
        if slot > now:
            await self._sleep(slot - now)


def _transient(err: stripe.StripeError) -> bool:
    if isinstance(err, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = err.http_status or 0
    return status == 429 or status >= 500


def _describe(err: stripe.StripeError) -> str:
    return f"{type(err).__name__} (HTTP {err.http_status}): {err.user_message or err}"


class StripeApi:
    """The few Stripe calls billing makes. Build it inside the running loop; close it after."""

    def __init__(self, settings: Settings) -> None:
        assert settings.stripe_api_key is not None
        self._http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s)
        base = settings.stripe_api_base
        addresses: Any = {"api": base, "meter_events": base} if base else None
        self._client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses=addresses,
            max_network_retries=0,
            http_client=self._http,
        )
        self._event_name = settings.stripe_meter_event_name
        self._pacer = Pacer(settings.stripe_requests_per_s)
        self._attempts = settings.stripe_max_attempts
        self._backoff = (settings.stripe_retry_initial_s, settings.stripe_retry_max_s)
        self._meter_id: str | None = None

    async def close(self) -> None:
        await self._http.close_async()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` paced, and retried with back-off while Stripe answers 429/5xx."""
        initial, cap = self._backoff
        for attempt in range(1, self._attempts + 1):
            await self._pacer.wait()
            try:
                return await call()
            except stripe.StripeError as err:
                if not _transient(err):
                    raise
                if attempt == self._attempts:
                    raise TransientStripeError(f"{what}: {_describe(err)}") from None
                delay = min(cap, initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.info("%s: %s; attempt %d again in %.2fs", what, _describe(err), attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def create_customer(self, tenant_id: str) -> str:
        """A new customer for the tenant. The idempotency key makes a retried (or concurrent)
        creation return the same customer rather than a second one."""
        customer = await self._call(
            "create customer",
            lambda: self._client.v1.customers.create_async(
                params={
                    "description": f"CIC tenant {tenant_id}",
                    "metadata": {"cic_tenant_id": tenant_id},
                },
                options={"idempotency_key": f"cic-customer-{tenant_id}"},
            ),
        )
        return str(customer.id)

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        """The URL of a new customer-portal session for the customer (Stripe's default portal
        configuration), paced and retried like every call. A retried creation makes a second
        session at worst, which is harmless: a session is only a short-lived link."""
        session = await self._call(
            "create portal session",
            lambda: self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url}
            ),
        )
        return str(session.url)

    async def send_meter_event(
        self, identifier: str, customer_id: str, value: int, timestamp: int
    ) -> MeterResult:
        params: Any = {
            "event_name": self._event_name,
            "identifier": identifier,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer_id, "value": str(value)},
        }
        try:
            await self._call(
                f"meter event {identifier}",
                lambda: self._client.v1.billing.meter_events.create_async(params=params),
            )
        except TransientStripeError as err:
            return MeterResult(Delivery.RETRY_LATER, str(err))
        except stripe.StripeError as err:
            if err.http_status == 400 and DUPLICATE_IDENTIFIER in str(err.user_message or ""):
                return MeterResult(Delivery.DUPLICATE)
            return MeterResult(Delivery.REFUSED, _describe(err))
        return MeterResult(Delivery.SENT)

    async def meter_id(self) -> str | None:
        """The id of the active meter with our event name (None: there is none)."""
        if self._meter_id is None:
            meters = await self._call(
                "list meters",
                lambda: self._client.v1.billing.meters.list_async(
                    params={"status": "active", "limit": 100}
                ),
            )
            async for meter in meters.auto_paging_iter():
                if meter.event_name == self._event_name:
                    self._meter_id = str(meter.id)
                    break
        return self._meter_id

    async def meter_total(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        """What Stripe aggregated for the customer over ``[start, end)`` (minute-aligned)."""
        summaries = await self._call(
            "meter event summaries",
            lambda: self._client.v1.billing.meters.event_summaries.list_async(
                meter_id,
                params={
                    "customer": customer_id,
                    "start_time": start,
                    "end_time": end,
                    "limit": 100,
                },
            ),
        )
        total = 0
        async for summary in summaries.auto_paging_iter():
            total += int(summary.aggregated_value)
        return total

    async def list_invoices(self, customer_id: str, limit: int) -> list[InvoiceSummary]:
        """The customer's newest ``limit`` invoices, newest first."""
        page = await self._call(
            "list invoices",
            lambda: self._client.v1.invoices.list_async(
                params={"customer": customer_id, "limit": limit}
            ),
        )
        return [
            InvoiceSummary(
                id=str(invoice.id),
                number=str(invoice.number or ""),
                status=str(invoice.status or ""),
                amount_due_cents=int(invoice.amount_due or 0),
                amount_paid_cents=int(invoice.amount_paid or 0),
                currency=str(invoice.currency or ""),
                created=datetime.fromtimestamp(int(invoice.created or 0), UTC),
                hosted_invoice_url=str(invoice.hosted_invoice_url or ""),
            )
            for invoice in page.data
        ]
