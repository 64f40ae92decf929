"""The scheduler's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from pydantic import Field

from cic_common.settings import GrpcServiceSettings


class SchedulerSettings(GrpcServiceSettings):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # How often every node's ``GET {endpoint}/health`` is called, and how long one call may take.
    health_probe_interval_s: float = Field(default=2.0, gt=0, le=3600)
    health_probe_timeout_s: float = Field(default=2.0, gt=0, le=600)
    # Consecutive failed probes (or node errors reported on release) that take a node out.
    unhealthy_after_failures: int = Field(default=3, ge=1, le=1000)
    # A lease not released within this time is given back by the sweeper.
    lease_ttl_s: float = Field(default=600.0, gt=0, le=86400)

    @property
    def lease_sweep_interval_s(self) -> float:
        """Sweeps often enough that a lease outlives its TTL by a quarter of it at most (≤ 10 s)."""
        return min(max(self.lease_ttl_s / 4, 0.01), 10.0)
