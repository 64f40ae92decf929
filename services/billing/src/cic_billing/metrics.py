"""Billing's own Prometheus metrics (the gRPC server's come from cic_common.metrics)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BillingMetrics:
    """Registered in the registry given: the default one in production, a fresh one in tests."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events_recorded = Counter(
            "cic_billing_events_recorded_total",
            "Usage events written to the ledger",
            registry=registry,
        )
        self.duplicate_events = Counter(
            "cic_billing_duplicate_events_total",
            "Usage events whose request id the ledger already held (or that repeated one in the"
            " same batch), so nothing was written",
            registry=registry,
        )
        self.rejected_batches = Counter(
            "cic_billing_rejected_batches_total",
            "RecordUsage calls that wrote nothing, by reason",
            ["reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "cic_billing_batch_size_events",
            "Usage events per RecordUsage call",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            "cic_billing_ingest_seconds",
            "Time to check, price and write one RecordUsage batch",
            buckets=_INGEST_BUCKETS,
            registry=registry,
        )
        self.meter_events = Counter(
            "cic_billing_stripe_meter_events_total",
            "Meter events sent to Stripe, by result (sent, duplicate: Stripe had it already,"
            " retry_later, refused)",
            ["result"],
            registry=registry,
        )
        self.stripe_customers_created = Counter(
            "cic_billing_stripe_customers_created_total",
            "Stripe customers created for tenants",
            registry=registry,
        )
        self.reconcile_shortfalls = Counter(
            "cic_billing_stripe_reconcile_shortfalls_total",
            "Tenants for whom a reconciliation found Stripe holding less than was reported",
            registry=registry,
        )
        self.webhook_events = Counter(
            "cic_billing_stripe_webhook_events_total",
            "Stripe webhook deliveries, by result (processed, duplicate, rejected)",
            ["result"],
            registry=registry,
        )
        self.portal_sessions = Counter(
            "cic_billing_stripe_portal_sessions_total",
            "CreatePortalSession calls, by result (created, unavailable: Stripe unreachable,"
            " refused: Stripe refused)",
            ["result"],
            registry=registry,
        )
        self.notifications = Counter(
            "cic_billing_notifications_total",
            "Notification delivery attempts, by channel type (slack, discord, email, webhook)"
            " and outcome (delivered, retrying: to be tried again, failed: given up)",
            ["channel_type", "outcome"],
            registry=registry,
        )
        self.notification_events = Counter(
            "cic_billing_notification_events_total",
            "Event-bus entries the notifier read, by result (routed, unreadable)",
            ["result"],
            registry=registry,
        )
        self.credit_draws = Counter(
            "cic_billing_credit_draws_total",
            "Draws of recorded usage from prepaid credit grants",
            registry=registry,
        )
        self.budget_transitions = Counter(
            "cic_billing_budget_transitions_total",
            "Budget scopes blocked (by reason: monthly_limit, credit_exhausted) or unblocked",
            ["reason"],
            registry=registry,
        )
        self.budget_mirror_failures = Counter(
            "cic_billing_budget_mirror_failures_total",
            "Writes of blocked budget scopes to Redis that failed (the keeper rewrites them)",
            registry=registry,
        )
