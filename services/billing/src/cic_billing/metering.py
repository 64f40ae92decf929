"""The Stripe reporter: turns the ledger into meter events, and reconciles the two.

Every ``STRIPE_REPORT_INTERVAL_S`` one billing replica (a Postgres advisory lock picks it) claims
the ledger events no report holds yet into one report per tenant, then sends the reports that
are due: one meter event each, one at a time per customer (Stripe allows one concurrent call per
customer and meter), several customers at once, paced under Stripe's rate limit. A report Stripe
took, or refused as a duplicate identifier, is sent; one that met 429/5xx on every attempt is
tried again later with growing delays; one Stripe refused otherwise is marked failed.

:meth:`StripeReporter.reconcile` compares, per tenant, the ledger's cost with the reports and with
what Stripe's meter event summaries hold, and re-sends what Stripe is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import stripe

from cic_billing.config import Settings
from cic_billing.meter_store import DueReport, MeterStore
from cic_billing.metrics import BillingMetrics
from cic_billing.stripe_api import Delivery, InvoiceSummary, StripeApi, TransientStripeError
from cic_common.periodic import cancel_and_wait

log = logging.getLogger(__name__)

CLAIM_LIMIT = 50_000
DUE_LIMIT = 1_000
# Stripe takes meter events up to 35 days old; older reports are sent stamped 34 days back.
OLDEST_TIMESTAMP = timedelta(days=34)
# Stripe refuses a repeated identifier for at least 24 hours: only reports sent since then may be
# sent again safely.
RESEND_WINDOW = timedelta(hours=23)


@dataclass(slots=True)
class RoundResult:
    events_claimed: int = 0
    reports_sent: int = 0
    reports_failed: int = 0


@dataclass(frozen=True, slots=True)
class TenantCheck:
    tenant_id: str
    customer_id: str
    ledger_micro_usd: int
    reported_micro_usd: int
    stripe_micro_usd: int  # -1: not read
    reports_resent: int


@dataclass(slots=True)
class Reconciliation:
    round: RoundResult = field(default_factory=RoundResult)
    tenants: list[TenantCheck] = field(default_factory=list)


def _window_start(now: datetime, interval_s: int) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % interval_s, UTC)


def _minute_floor(moment: datetime) -> int:
    epoch = int(moment.timestamp())
    return epoch - epoch % 60


class StripeReporter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        api: StripeApi,
        metrics: BillingMetrics,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._store = MeterStore(pool)
        self._api = api
        self._metrics = metrics
        self._interval_s = settings.stripe_report_interval_s
        self._reconcile_every_s = settings.stripe_reconcile_interval_s
        self._concurrency = settings.stripe_concurrency
        self._retry = (settings.stripe_retry_initial_s, settings.stripe_retry_max_s)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stripe-reporter")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._api.close()

    async def _run(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self._interval_s - time.time() % self._interval_s)
            try:
                if self._reconcile_every_s and (
                    time.monotonic() - last_reconcile >= self._reconcile_every_s
                ):
                    last_reconcile = time.monotonic()
                    await self.reconcile(datetime.now(UTC) - timedelta(hours=24))
                else:
                    await self.run_round()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("Stripe report round failed: %s: %s", type(err).__name__, err)
            except Exception:
                log.exception("Stripe report round failed; trying again next round")

    async def run_round(self) -> RoundResult | None:
        """Claims unreported events and sends the reports that are due, if this replica leads
        (None when another one does)."""
        async with self._leading() as leading:
            if not leading:
                return None
            return await self._round()

    @contextlib.asynccontextmanager
    async def _leading(self) -> AsyncIterator[bool]:
        async with self._lock, self._pool.acquire() as conn:
            leading = await self._store.try_lead(conn)
            try:
                yield leading
            finally:
                if leading:
                    await self._store.step_down(conn)

    async def _round(self) -> RoundResult:
        result = RoundResult()
        result.events_claimed = await self._store.claim(
            _window_start(datetime.now(UTC), self._interval_s), CLAIM_LIMIT
        )
        while True:
            due = await self._store.due(DUE_LIMIT)
            if not due:
                break
            sent, failed = await self._send(due)
            result.reports_sent += sent
            result.reports_failed += failed
            if len(due) < DUE_LIMIT:
                break
        return result

    async def _send(self, due: list[DueReport]) -> tuple[int, int]:
        by_tenant: dict[str, list[DueReport]] = defaultdict(list)
        for report in due:
            by_tenant[report.tenant_id].append(report)
        gate = asyncio.Semaphore(self._concurrency)

        async def one_tenant(reports: list[DueReport]) -> tuple[int, int]:
            async with gate:
                return await self._send_tenant(reports)

        results = await asyncio.gather(*(one_tenant(r) for r in by_tenant.values()))
        return sum(s for s, _ in results), sum(f for _, f in results)

    async def customer(self, tenant_id: str, known: str | None = None) -> str:
        """The tenant's Stripe customer: ``known``, else the stored one, else a new one (created
        with an idempotency key, stored unless a concurrent creation stored one first)."""
        if known:
            return known
        stored = await self._store.customer(tenant_id)
        if stored:
            return stored
        created = await self._api.create_customer(tenant_id)
        self._metrics.stripe_customers_created.inc()
        return await self._store.save_customer(tenant_id, created)

    async def portal_session(self, tenant_id: str, return_url: str) -> tuple[str, str]:
        """A customer-portal session for the tenant (its customer created first if it has none):
        ``(url, customer id)``."""
        customer = await self.customer(tenant_id)
        return await self._api.create_portal_session(customer, return_url), customer

    async def invoices(self, tenant_id: str, limit: int) -> list[InvoiceSummary]:
        """The tenant's newest invoices at Stripe (none while it has no Stripe customer)."""
        customer = await self._store.customer(tenant_id)
        if customer is None:
            return []
        return await self._api.list_invoices(customer, limit)

    async def _send_tenant(self, reports: list[DueReport]) -> tuple[int, int]:
        """The tenant's reports in order, one at a time; stops at the first that must wait."""
        try:
            customer = await self.customer(reports[0].tenant_id, reports[0].customer_id)
        except TransientStripeError as err:
            for report in reports:
                await self._later(report, str(err))
            return 0, 0
        except stripe.StripeError as err:
            for report in reports:
                await self._store.refused(report.id, f"creating the customer: {err}")
                self._metrics.meter_events.labels("refused").inc()
            return 0, len(reports)
        sent = failed = 0
        oldest = datetime.now(UTC) - OLDEST_TIMESTAMP
        for report in reports:
            stamp = int(max(report.window_start, oldest).timestamp())
            result = await self._api.send_meter_event(
                report.identifier, customer, report.value_micro_usd, stamp
            )
            self._metrics.meter_events.labels(result.delivery.value).inc()
            if result.delivery in (Delivery.SENT, Delivery.DUPLICATE):
                await self._store.delivered(report.id)
                sent += 1
            elif result.delivery is Delivery.REFUSED:
                log.error("Stripe refused meter event %s: %s", report.identifier, result.error)
                await self._store.refused(report.id, result.error or "refused")
                failed += 1
            else:
                await self._later(report, result.error or "unavailable")
                break
        return sent, failed

    async def _later(self, report: DueReport, error: str) -> None:
        initial, cap = self._retry
        delay = min(cap, initial * 2 ** min(report.attempts, 30))
        log.warning("meter event %s not sent (%s); again in %.1fs", report.identifier, error, delay)
        await self._store.retry_later(report.id, delay, error)

    async def reconcile(self, since: datetime) -> Reconciliation:
        """Sends what is unsent (failed reports included), then compares per tenant the ledger,
        the reports and Stripe's meter event summaries since ``since``; a tenant Stripe holds
        less for gets its recent reports sent again (Stripe refuses those it has)."""
        outcome = Reconciliation()
        async with self._leading() as leading:
            if not leading:
                return outcome
            await self._store.retry_failed(since)
            outcome.round = await self._round()
            meter_id = await self._meter_id()
            start = _minute_floor(since)
            end = _minute_floor(datetime.now(UTC)) + 120
            resend_after = datetime.now(UTC) - RESEND_WINDOW
            for figures in await self._store.figures(datetime.fromtimestamp(start, UTC)):
                if figures.ledger_micro_usd != figures.reports_micro_usd:
                    log.error(
                        "tenant %s: reports hold %d micro-USD, their ledger events %d",
                        figures.tenant_id,
                        figures.reports_micro_usd,
                        figures.ledger_micro_usd,
                    )
                at_stripe, resent = -1, 0
                if meter_id and figures.customer_id:
                    at_stripe = await self._stripe_total(meter_id, figures.customer_id, start, end)
                    if 0 <= at_stripe < figures.reported_micro_usd:
                        self._metrics.reconcile_shortfalls.inc()
                        resent = await self._store.resend(
                            figures.tenant_id, datetime.fromtimestamp(start, UTC), resend_after
                        )
                        log.warning(
                            "tenant %s: Stripe holds %d micro-USD of %d reported; %d reports"
                            " sent again",
                            figures.tenant_id,
                            at_stripe,
                            figures.reported_micro_usd,
                            resent,
                        )
                outcome.tenants.append(
                    TenantCheck(
                        tenant_id=figures.tenant_id,
                        customer_id=figures.customer_id or "",
                        ledger_micro_usd=figures.ledger_micro_usd,
                        reported_micro_usd=figures.reported_micro_usd,
                        stripe_micro_usd=at_stripe,
                        reports_resent=resent,
                    )
                )
            if any(t.reports_resent for t in outcome.tenants):
                again = await self._round()
                outcome.round.reports_sent += again.reports_sent
                outcome.round.reports_failed += again.reports_failed
        return outcome

    async def _stripe_total(self, meter_id: str, customer_id: str, start: int, end: int) -> int:
        try:
            return await self._api.meter_total(meter_id, customer_id, start, end)
        except (stripe.StripeError, TransientStripeError) as err:
            log.warning("cannot read Stripe's usage of %s: %s", customer_id, err)
            return -1

    async def _meter_id(self) -> str | None:
        try:
            meter_id = await self._api.meter_id()
        except (stripe.StripeError, TransientStripeError) as err:
            log.warning("cannot read Stripe's meters (%s); not comparing with Stripe", err)
            return None
        if meter_id is None:
            log.warning("Stripe has no active meter for our event name; not comparing with it")
        return meter_id
