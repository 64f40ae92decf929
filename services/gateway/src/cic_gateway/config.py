"""The gateway's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from cic_common.settings import HostPort, PostgresUrl, RedisUrl, ServiceSettings

MIN_ADMIN_TOKEN_CHARS = 32


class GatewaySettings(ServiceSettings):
    """``DATABASE_URL``, ``REDIS_URL``, ``ADMIN_API_TOKEN`` and the three gRPC addresses are
    required; every other setting has a default."""

    gateway_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    database_url: PostgresUrl
    redis_url: RedisUrl
    admin_api_token: SecretStr
    scheduler_addr: HostPort
    billing_addr: HostPort
    orchestrator_addr: HostPort
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Time allowed between two reads from a node (a long generation is fine while tokens flow).
    upstream_read_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    # A revoked key or suspended tenant stops working on every replica within this time.
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=5)
    # Usage events are sent to billing in batches at least this often.
    usage_flush_interval_s: float = Field(default=0.25, gt=0, le=60)

    @field_validator("admin_api_token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return value
