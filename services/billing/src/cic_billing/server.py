"""Builds the billing service from its settings, runs it, and stops it in order."""

from __future__ import annotations

import logging

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry

from cic.billing.v1 import billing_pb2_grpc
from cic_billing.budget_state import BudgetState
from cic_billing.charging import Charger
from cic_billing.config import Settings
from cic_billing.ledger import Ledger
from cic_billing.metering import StripeReporter
from cic_billing.metrics import BillingMetrics
from cic_billing.notify.service import Notifier
from cic_billing.pricing import PriceBook
from cic_billing.servicer import BillingServicer
from cic_billing.servicer_admin import StripeParts
from cic_billing.stripe_api import StripeApi
from cic_billing.webhooks import WebhookStore
from cic_common import runtime
from cic_common.db import close_pool, open_pool
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics

log = logging.getLogger(__name__)

SCHEMA = "billing"
MIGRATIONS_PACKAGE = "cic_billing.migrations"
SERVICE_NAME = "cic.billing.v1.BillingService"
POOL_CLOSE_TIMEOUT_S = 5.0
NOTIFIER_CLOSE_TIMEOUT_S = 5.0


class BillingService:
    """The gRPC server, its servicer, the Stripe reporter (with a Stripe key), the notifier and
    the Postgres pool, started and stopped together."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.pool = pool
        self.prices = PriceBook(pool, settings.price_refresh_s)
        self.ledger = Ledger(pool)
        self.grpc = GrpcServer(GrpcMetrics(registry))
        self.metrics = BillingMetrics(registry)
        self.notifier = Notifier(settings, pool, self.metrics, registry)
        self.reporter: StripeReporter | None = None
        if settings.stripe_api_key is not None:
            self.reporter = StripeReporter(pool, StripeApi(settings), self.metrics, settings)
        secret = settings.stripe_webhook_secret
        stripe = StripeParts(
            webhooks=WebhookStore(pool),
            reporter=self.reporter,
            webhook_secret=secret.get_secret_value() if secret else None,
            webhook_tolerance_s=settings.stripe_webhook_tolerance_s,
            events=self.notifier.bus,
        )
        servicer = BillingServicer(self.ledger, self.prices, self.metrics, stripe)
        servicer.notifier = self.notifier
        bus = self.notifier.bus
        self.budgets = BudgetState(
            pool,
            bus.redis if bus is not None else None,
            settings.redis_key_prefix,
            bus,
            self.metrics,
            settings.budget_sync_interval_s,
        )
        servicer.budget_state = self.budgets
        servicer.charger = Charger(pool, self.budgets, self.metrics)
        self.grpc.add_service(
            SERVICE_NAME, billing_pb2_grpc.add_BillingServiceServicer_to_server, servicer
        )

    async def start(self, port: int | None = None, host: str = "[::]") -> int:
        """Loads the prices, serves on ``port`` (default GRPC_PORT; 0 picks a free one), then
        starts reporting to Stripe."""
        await self.prices.reload()
        bound = await self.grpc.start(self.settings.grpc_port if port is None else port, host)
        if self.reporter is not None:
            await self.reporter.start()
        await self.notifier.start()
        await self.budgets.start()
        return bound

    async def stop(self) -> None:
        """Health to NOT_SERVING, lets calls in flight finish within the grace period, stops
        the reporter (a report cut short is sent again later: Stripe refuses the repeat), then
        closes the pool."""
        try:
            await self.grpc.stop(self.settings.shutdown_grace_s)
        finally:
            try:
                await self.budgets.close()
                if self.reporter is not None:
                    await self.reporter.close()
                await self.notifier.close(NOTIFIER_CLOSE_TIMEOUT_S)
            finally:
                await close_pool(self.pool, POOL_CLOSE_TIMEOUT_S)


async def create_service(
    settings: Settings, registry: CollectorRegistry = REGISTRY
) -> BillingService:
    """Migrates the ``billing`` schema, opens the pool and builds the (not yet started) service."""
    pool = await open_pool(
        settings.database_url, SCHEMA, MIGRATIONS_PACKAGE, max_size=settings.db_pool_max
    )
    try:
        return BillingService(settings, pool, registry)
    except BaseException:
        await close_pool(pool, POOL_CLOSE_TIMEOUT_S)
        raise


async def serve(settings: Settings) -> None:
    """Runs billing until SIGTERM or SIGINT, then shuts it down in order."""
    stop = runtime.stop_event_on_signals()
    try:
        service = await create_service(settings)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        log.error("cannot open the billing database: %s: %s", type(err).__name__, err)
        raise SystemExit(1) from None
    try:
        port = await service.start()
    except BaseException:
        await service.stop()
        raise
    log.info(
        "billing serving gRPC on port %d; Stripe reporting %s, webhooks %s",
        port,
        "on" if service.reporter else "off (no STRIPE_API_KEY)",
        "on" if settings.stripe_webhook_secret else "off (no STRIPE_WEBHOOK_SECRET)",
    )
    await stop.wait()
    log.info("billing stopping: finishing calls in flight within %ss", settings.shutdown_grace_s)
    await service.stop()
    log.info("billing stopped")
