"""The gateway's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from cic_common.settings import ServiceSettings

_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
MIN_ADMIN_TOKEN_CHARS = 32


class GatewaySettings(ServiceSettings):
    """``DATABASE_URL``, ``REDIS_URL``, ``ADMIN_API_TOKEN`` and the three gRPC addresses are
    required; every other setting has a default."""

    gateway_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    database_url: str
    redis_url: str
    admin_api_token: SecretStr
    scheduler_addr: str
    billing_addr: str
    orchestrator_addr: str
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Time allowed between two reads from a node (a long generation is fine while tokens flow).
    upstream_read_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    # A revoked key or suspended tenant stops working on every replica within this time.
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=5)
    # Usage events are sent to billing in batches at least this often.
    usage_flush_interval_s: float = Field(default=0.25, gt=0, le=60)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        # Messages never repeat the value: a URL may hold a password.
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("admin_api_token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return value

    @field_validator("scheduler_addr", "billing_addr", "orchestrator_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        match = _HOST_PORT.match(value)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value
