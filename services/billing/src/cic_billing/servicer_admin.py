"""The prices and Stripe RPCs of ``cic.billing.v1.BillingService`` (the usage RPCs are in
:mod:`cic_billing.servicer`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from cic_billing.events import BIGINT_MAX, text_problem, to_datetime
from cic_billing.ledger import TRANSIENT_DB_ERRORS
from cic_billing.metering import StripeReporter
from cic_billing.metrics import BillingMetrics
from cic_billing.pricing import Price, PriceBook, PriceRow, delete_price, list_prices, set_price
from cic_billing.webhooks import BadWebhook, WebhookStore, verify
from cic_common.events_bus import EventBus, EventKind
from cic_common.grpc_replies import abort

log = logging.getLogger(__name__)

MAX_MODEL_CHARS = 200
MAX_WEBHOOK_BYTES = 1024 * 1024
PAYMENT_FAILED_TYPE = "invoice.payment_failed"


def _price_message(row: PriceRow) -> billing_pb2.ModelPrice:
    stamp = Timestamp()
    stamp.FromDatetime(row.updated_at)
    return billing_pb2.ModelPrice(
        model=row.model,
        prompt_micro_usd_per_mtok=row.price.prompt_micro_usd_per_mtok,
        completion_micro_usd_per_mtok=row.price.completion_micro_usd_per_mtok,
        updated_at=stamp,
    )


def _model_problem(model: str) -> str | None:
    if not model:
        return "model is empty"
    if len(model) > MAX_MODEL_CHARS:
        return f"model is longer than {MAX_MODEL_CHARS} characters"
    problem = text_problem(model)
    return f"model {problem}" if problem else None


@dataclass(frozen=True, slots=True)
class StripeParts:
    webhooks: WebhookStore
    reporter: StripeReporter | None  # None: no STRIPE_API_KEY
    webhook_secret: str | None  # None: no STRIPE_WEBHOOK_SECRET
    webhook_tolerance_s: int
    events: EventBus | None = None  # payment.failed goes there (None: no REDIS_URL)


class AdminRpcs:
    """Prices, webhooks and reconciliation."""

    def __init__(self, prices: PriceBook, metrics: BillingMetrics, stripe: StripeParts) -> None:
        self._prices = prices
        self._metrics = metrics
        self._webhooks = stripe.webhooks
        self._reporter = stripe.reporter
        self._webhook_secret = stripe.webhook_secret
        self._tolerance_s = stripe.webhook_tolerance_s
        self._events = stripe.events

    async def ListPrices(
        self, request: billing_pb2.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListPricesResponse:
        try:
            rows = await list_prices(self._prices.pool)
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the price table is unavailable")
        return billing_pb2.ListPricesResponse(prices=[_price_message(r) for r in rows])

    async def SetPrice(
        self, request: billing_pb2.SetPriceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ModelPrice:
        problem = _model_problem(request.model)
        for field in ("prompt_micro_usd_per_mtok", "completion_micro_usd_per_mtok"):
            if not 0 <= getattr(request, field) <= BIGINT_MAX:
                problem = problem or f"{field} is negative"
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        price = Price(request.prompt_micro_usd_per_mtok, request.completion_micro_usd_per_mtok)
        try:
            row = await set_price(self._prices.pool, request.model, price)
            await self._prices.reload()
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the price table is unavailable")
        log.info("price of %s set: %s", request.model, price)
        return _price_message(row)

    async def DeletePrice(
        self, request: billing_pb2.DeletePriceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.DeletePriceResponse:
        problem = _model_problem(request.model)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            found = await delete_price(self._prices.pool, request.model)
            await self._prices.reload()
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the price table is unavailable")
        if not found:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no price for model {request.model!r}")
        log.info("price of %s deleted", request.model)
        return billing_pb2.DeletePriceResponse()

    async def HandleStripeWebhook(
        self, request: billing_pb2.StripeWebhookRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.StripeWebhookResponse:
        if self._webhook_secret is None:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "billing has no Stripe webhook secret"
            )
        if len(request.payload) > MAX_WEBHOOK_BYTES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the event is too large")
        try:
            event = verify(
                request.payload, request.signature, self._webhook_secret, self._tolerance_s
            )
        except BadWebhook as err:
            self._metrics.webhook_events.labels("rejected").inc()
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            outcome = await self._webhooks.record(event)
        except TRANSIENT_DB_ERRORS as err:
            log.warning("webhook %s not recorded: %s: %s", event.id, type(err).__name__, err)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "billing's database is unavailable")
        self._metrics.webhook_events.labels("duplicate" if outcome.duplicate else "processed").inc()
        if self._events is not None and outcome.first and outcome.tenant_id:
            if event.type == PAYMENT_FAILED_TYPE:
                await self._events.publish(
                    EventKind.PAYMENT_FAILED,
                    outcome.tenant_id,
                    {"stripe_event_id": event.id, "customer_id": event.customer_id or ""},
                )
        log.info(
            "Stripe event %s (%s)%s%s",
            outcome.event_id,
            outcome.event_type,
            " already processed" if outcome.duplicate else "",
            f": tenant {outcome.tenant_id} {outcome.tenant_status}"
            if outcome.tenant_status
            else "",
        )
        return billing_pb2.StripeWebhookResponse(
            event_id=outcome.event_id,
            event_type=outcome.event_type,
            duplicate=outcome.duplicate,
            tenant_id=outcome.tenant_id if outcome.tenant_status else "",
            tenant_status=outcome.tenant_status,
        )

    async def ConfirmStripeEvent(
        self, request: billing_pb2.ConfirmStripeEventRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ConfirmStripeEventResponse:
        if not request.event_id or text_problem(request.event_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "event_id is empty or invalid")
        try:
            found = await self._webhooks.confirm(request.event_id)
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "billing's database is unavailable")
        if not found:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no event {request.event_id!r}")
        return billing_pb2.ConfirmStripeEventResponse()

    async def ReconcileStripe(
        self, request: billing_pb2.ReconcileStripeRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ReconcileStripeResponse:
        if self._reporter is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "billing has no Stripe key")
        since = datetime.now(UTC) - timedelta(hours=24)
        if request.HasField("since"):
            try:
                since = to_datetime(request.since)
            except ValueError:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "since is not a valid time")
        try:
            result = await self._reporter.reconcile(since)
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "billing's database is unavailable")
        return billing_pb2.ReconcileStripeResponse(
            events_claimed=result.round.events_claimed,
            reports_sent=result.round.reports_sent,
            reports_failed=result.round.reports_failed,
            tenants=[
                billing_pb2.TenantReconciliation(
                    tenant_id=t.tenant_id,
                    customer_id=t.customer_id,
                    ledger_micro_usd=t.ledger_micro_usd,
                    reported_micro_usd=t.reported_micro_usd,
                    stripe_micro_usd=t.stripe_micro_usd,
                    reports_resent=t.reports_resent,
                )
                for t in result.tenants
            ],
        )
