"""Billing's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from cic_common.settings import GrpcServiceSettings, PostgresUrl, RedisUrl

# Stripe's published limits: 1,000 meter events per second in live mode, 25 requests per second
# in test mode (shared with every other call). Billing stays well under both.
LIVE_MAX_REQUESTS_PER_S = 500.0
TEST_MAX_REQUESTS_PER_S = 20.0


class Settings(GrpcServiceSettings):
    """``DATABASE_URL`` is required; every other setting has a default. Without
    ``STRIPE_API_KEY`` billing keeps its ledger and reports nothing to Stripe; without
    ``STRIPE_WEBHOOK_SECRET`` it refuses webhooks."""

    database_url: PostgresUrl
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    # How long prices are cached in memory before the next ingest reloads them (0: every call).
    price_refresh_s: float = Field(default=30.0, ge=0, le=3600)

    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Where the Stripe SDK sends its requests (a local fake in tests); unset: Stripe's own.
    stripe_api_base: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    # The meter's event name; its value is the cost in micro-dollars.
    stripe_meter_event_name: str = Field(
        default="cic_usage_micro_usd", min_length=1, max_length=100
    )
    # Ledger events are summed per tenant over windows this long, one meter event per window.
    stripe_report_interval_s: int = Field(default=60, ge=1, le=86400)
    # Calls per second to Stripe at most (test-mode keys are held to TEST_MAX_REQUESTS_PER_S).
    stripe_max_requests_per_s: float = Field(default=LIVE_MAX_REQUESTS_PER_S, gt=0, le=1000)
    # Meter events sent at once (each customer gets one at a time, as Stripe requires).
    stripe_concurrency: int = Field(default=8, ge=1, le=100)
    # Attempts per request on 429, 5xx or a network error, with exponential back-off from
    # STRIPE_RETRY_INITIAL_S; a report still unsent is retried in a later round.
    stripe_max_attempts: int = Field(default=5, ge=1, le=20)
    stripe_retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    stripe_retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    stripe_timeout_s: float = Field(default=20.0, gt=0, le=300)
    # How often the ledger is reconciled with what Stripe holds (0: never on its own).
    stripe_reconcile_interval_s: float = Field(default=3600.0, ge=0, le=7 * 86400)
    # Tolerance of webhook timestamps, in the past and in the future.
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)

    # How often every budget is recomputed and the blocked scopes rewritten to Redis (a new
    # month unblocks, an expired grant may block a prepaid tenant, a lost write heals).
    budget_sync_interval_s: float = Field(default=5.0, gt=0, le=3600)

    # Notifications (cic_billing.notify): the event bus is a stream in this Redis (unset: no
    # events are read or published; channels can still be set up and tested).
    redis_url: RedisUrl | None = None
    redis_key_prefix: str = Field(default="cic:", max_length=100, pattern=r"^[A-Za-z0-9_.:\-]*$")
    # Attempts per delivery on a network error, 429 or 5xx, with exponential back-off (and
    # jitter) from NOTIFY_RETRY_INITIAL_S up to NOTIFY_RETRY_MAX_S; then it is marked failed.
    notify_max_attempts: int = Field(default=8, ge=1, le=50)
    notify_retry_initial_s: float = Field(default=2.0, gt=0, le=3600)
    notify_retry_max_s: float = Field(default=600.0, gt=0, le=86400)
    # The deadline of one delivery attempt (an HTTP POST or an SMTP session).
    notify_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # How often due deliveries are looked for when nothing wakes the worker.
    notify_poll_interval_s: float = Field(default=1.0, gt=0, le=300)
    # Attempts made at once by one replica.
    notify_concurrency: int = Field(default=16, ge=1, le=1000)
    # Bus entries another replica read but did not route for this long are taken over.
    notify_claim_idle_s: float = Field(default=30.0, gt=0, le=86400)
    # Events and their delivery logs are kept this long (pending deliveries stay until settled).
    notify_retention_days: int = Field(default=30, ge=1, le=3650)
    # Tenants' URLs may name loopback, private or link-local addresses (operators' always may).
    notify_allow_private_targets: bool = False
    # Email channels: the same SMTP_* settings as the gateway's sign-in mail (unset SMTP_HOST:
    # email channels are refused).
    smtp_host: str = Field(default="", max_length=253)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str = Field(default="", max_length=500)
    smtp_password: SecretStr = SecretStr("")
    smtp_from: str = Field(default="CIC <no-reply@localhost>", max_length=500)

    @field_validator("stripe_api_key", "stripe_webhook_secret", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("stripe_api_base", mode="before")
    @classmethod
    def _empty_base_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def stripe_requests_per_s(self) -> float:
        """The rate billing holds itself to: the setting, capped for test-mode keys."""
        key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else ""
        if key.startswith(("sk_test_", "rk_test_")):
            return min(self.stripe_max_requests_per_s, TEST_MAX_REQUESTS_PER_S)
        return self.stripe_max_requests_per_s
