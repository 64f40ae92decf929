"""The gateway's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from cic_common.settings import HostPort, PostgresUrl, RedisUrl, ServiceSettings
from cic_gateway.cors import CorsOrigins
from cic_gateway.dashboard.settings import DashboardSettings

MIN_ADMIN_TOKEN_CHARS = 32


class GatewaySettings(DashboardSettings, ServiceSettings):
    """``DATABASE_URL``, ``REDIS_URL``, ``ADMIN_API_TOKEN`` and the three gRPC addresses are
    required; every other setting has a default (the dashboard's: ``DashboardSettings``)."""

    gateway_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    database_url: PostgresUrl
    redis_url: RedisUrl
    admin_api_token: SecretStr
    scheduler_addr: HostPort
    billing_addr: HostPort
    orchestrator_addr: HostPort
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    # Browser origins allowed by CORS (comma-separated; empty: none, `*`: any).
    cic_cors_origins: CorsOrigins = ()
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Time allowed between two reads from a node (a long generation is fine while tokens flow).
    upstream_read_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    # A revoked key or suspended tenant stops working on every replica within this time.
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=5)
    # While Postgres does not answer, a key this replica saw within this time is served as it
    # last was (0: refuse with 503 instead). No revocation can be written meanwhile.
    key_cache_stale_s: float = Field(default=900.0, ge=0, le=86400)
    # Usage events are sent to billing in batches at least this often.
    usage_flush_interval_s: float = Field(default=0.25, gt=0, le=60)
    # Usage events per RecordUsage call to billing.
    usage_batch_size: int = Field(default=500, ge=1, le=5000)
    # Outbox entries a replica read but has not had confirmed by billing for this long are
    # taken over by another replica (one that crashed, or stopped while billing was down).
    usage_outbox_claim_idle_s: float = Field(default=30.0, gt=0, le=86400)
    # Prefix of every Redis key and pub/sub channel the gateway uses (rate limits, revocations).
    redis_key_prefix: str = Field(default="cic:", max_length=100, pattern=r"^[A-Za-z0-9_.:\-]*$")
    # Per-minute limits for keys and tenants whose row has none; 0 = unlimited.
    default_key_rpm: int = Field(default=0, ge=0, le=1_000_000_000)
    default_key_tpm: int = Field(default=0, ge=0, le=1_000_000_000)
    default_tenant_rpm: int = Field(default=0, ge=0, le=1_000_000_000)
    default_tenant_tpm: int = Field(default=0, ge=0, le=1_000_000_000)
    # The platform's ceiling: requests and tokens per minute over every tenant; 0 = none.
    global_rpm_limit: int = Field(default=0, ge=0, le=1_000_000_000)
    global_tpm_limit: int = Field(default=0, ge=0, le=1_000_000_000)
    # A concurrency slot is a lease of this long, renewed while its request runs: the slots of a
    # gateway that died come back within it.
    concurrency_lease_s: float = Field(default=60.0, ge=1, le=3600)
    # Completion tokens reserved for a request that sets no max_tokens.
    default_max_tokens_estimate: int = Field(default=256, ge=0, le=10_000_000)
    # With Redis down: serve without rate limits (true) or answer 503 (false).
    rate_limit_fail_open: bool = True
    # The longest a request waits for Redis's rate-limit answer.
    rate_limit_redis_timeout_s: float = Field(default=0.5, gt=0, le=10)
    # Deadline of a call to the scheduler, billing or the orchestrator that sets none itself.
    grpc_timeout_s: float = Field(default=5.0, gt=0, le=300)
    # How often the model catalog is reloaded from billing (a change made through the admin API
    # reaches every replica at once through Redis; this covers a lost message).
    catalog_refresh_s: float = Field(default=30.0, gt=0, le=3600)
    # How often Postgres, Redis, the scheduler and billing are probed (cic_gateway_dependency_up).
    dependency_probe_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # How often the tenants and environments whose budget or prepaid credit is spent are re-read
    # from Redis (billing writes them there); a blocked scope is refused within about this time.
    budget_refresh_s: float = Field(default=1.0, gt=0, le=60)

    @field_validator("admin_api_token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return value
