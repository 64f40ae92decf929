"""The orchestrator's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

import shlex

from pydantic import Field, field_validator

from cic_common.settings import GrpcServiceSettings, HostPort, PostgresUrl

# Providers that LaunchNode can use, by the name NODE_PROVIDERS lists them under.
KNOWN_PROVIDERS = ("local",)


class Settings(GrpcServiceSettings):
    """``DATABASE_URL`` and ``SCHEDULER_ADDR`` are required; every other setting has a default."""

    database_url: PostgresUrl
    scheduler_addr: HostPort
    grpc_port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    # Comma-separated providers LaunchNode may use (see KNOWN_PROVIDERS).
    node_providers: str = "local"
    # The simulator command the local provider starts; split like a shell would.
    local_sim_command: str = "cic-vllm-sim"
    local_sim_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    # A node whose /health has not answered this long after launch fails and is cleaned up.
    launch_timeout_s: float = Field(default=120.0, gt=0, le=86400)
    # How often /health is polled while a node launches (and the scheduler while one drains).
    health_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # A draining node is terminated when its in-flight count reaches 0 or after this long.
    drain_timeout_s: float = Field(default=300.0, ge=0, le=86400)

    @field_validator("node_providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        for name in _split_names(value):
            if name not in KNOWN_PROVIDERS:
                raise ValueError(f"unknown provider {name!r} (known: {', '.join(KNOWN_PROVIDERS)})")
        return value

    @field_validator("local_sim_command")
    @classmethod
    def _command(cls, value: str) -> str:
        try:
            words = shlex.split(value)
        except ValueError as err:
            raise ValueError(f"cannot be split into words: {err}") from None
        if not words:
            raise ValueError("must name a command")
        return value

    @property
    def enabled_providers(self) -> frozenset[str]:
        return frozenset(_split_names(self.node_providers))

    @property
    def local_sim_argv(self) -> list[str]:
        return shlex.split(self.local_sim_command)


def _split_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]
