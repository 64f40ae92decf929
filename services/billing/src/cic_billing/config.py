"""Billing's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from pydantic import Field

from cic_common.settings import GrpcServiceSettings, PostgresUrl


class Settings(GrpcServiceSettings):
    """``DATABASE_URL`` is required; every other setting has a default."""

    database_url: PostgresUrl
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    # How long prices are cached in memory before the next ingest reloads them (0: every call).
    price_refresh_s: float = Field(default=30.0, ge=0, le=3600)
