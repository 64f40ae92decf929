"""The orchestrator's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from cic_common.settings import GrpcServiceSettings, HostPort, PostgresUrl, RedisUrl
from cic_orchestrator.task import (
    DEFAULT_AGENT_PACKAGE,
    DEFAULT_VLLM_VERSION,
    TaskSettings,
    check_agent_package,
    check_control_plane_url,
    check_vllm_version,
)

# Providers that LaunchNode can use, by the name NODE_PROVIDERS lists them under.
KNOWN_PROVIDERS = ("local", "skypilot")


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
    # The `region` label of the local provider's nodes (empty: none).
    local_sim_region: str = Field(default="", pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
    # A node whose /health has not answered this long after launch fails and is cleaned up.
    launch_timeout_s: float = Field(default=120.0, gt=0, le=86400)
    # How often /health is polled while a node launches (and the scheduler while one drains).
    health_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # How long one probe of a node's /health may take before it counts as failed.
    health_probe_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # A draining node is terminated when its in-flight count reaches 0 or after this long.
    drain_timeout_s: float = Field(default=300.0, ge=0, le=86400)
    # How often the leader looks for clusters no node owns and retries stuck terminations.
    reconcile_interval_s: float = Field(default=60.0, gt=0, le=86400)

    # What SkyPilot nodes install and serve on (see cic_orchestrator.task).
    vllm_version: str = DEFAULT_VLLM_VERSION
    vllm_port: int = Field(default=8000, ge=1024, le=65535)
    # SkyPilot's API server (the SDK reads the same variable); required with NODE_PROVIDERS
    # naming skypilot.
    skypilot_api_server_endpoint: str = Field(default="", validate_default=True)
    # Clusters are named <prefix>-<node id>; clusters with the prefix that no node owns are
    # torn down by the reconcile loop.
    skypilot_cluster_prefix: str = Field(default="cic", pattern=r"^[a-z][a-z0-9]{0,15}$")
    # A SkyPilot launch (provisioning, setup, vLLM start) fails after this long.
    skypilot_launch_timeout_s: float = Field(default=1800.0, gt=0, le=86400)
    # How often a SkyPilot request is asked whether it finished; the bound of one SDK call.
    skypilot_poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    skypilot_call_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # The node agent (cic-node-agent) the SkyPilot task runs beside vLLM: the gateway's public
    # URL it reports to (empty: nodes run no agent) and what installs it — the path of its wheel
    # (the image carries one; file_mounts copy it to the node), a requirement or a wheel's URL.
    node_agent_control_plane_url: str = ""
    node_agent_package: str = Field(default=DEFAULT_AGENT_PACKAGE, validate_default=True)
    # A ready node whose agent has reported before and is silent this long is degraded.
    agent_silent_after_s: float = Field(default=30.0, gt=0, le=86400)
    # A ready node whose /health has failed this long (its agent silent too) is dead: it fails
    # and is replaced.
    node_dead_after_s: float = Field(default=120.0, gt=0, le=86400)
    # Launch a replacement for a node that was preempted or lost after it was ready.
    replace_lost_nodes: bool = True
    # A spot launch that is refused (no capacity) is launched again on-demand.
    spot_fallback_on_demand: bool = True
    # Whether the local provider (a simulated cloud) has spot capacity.
    local_spot_available: bool = True
    # Lines of each node's log kept in memory for StreamNodeLogs.
    node_log_lines: int = Field(default=1000, ge=10, le=100_000)
    # Clusters with the prefix that no node owns are torn down once seen for this long.
    orphan_grace_s: float = Field(default=300.0, ge=0, le=86400)

    # The event bus (node.failed and node.preempted, for the operator's notification channels);
    # unset: nothing is published.
    redis_url: RedisUrl | None = None
    redis_key_prefix: str = Field(default="cic:", max_length=100, pattern=r"^[A-Za-z0-9_.:\-]*$")

    # Leader election: how often a standby tries to take the lock, and the leader checks it.
    leader_poll_interval_s: float = Field(default=2.0, gt=0, le=300)

    # Autoscaling (per model, by its scaling policy): how often to look, how long demand must
    # stay above (below) target before a node is added (drained and removed).
    autoscale_interval_s: float = Field(default=5.0, gt=0, le=3600)
    scale_up_after_s: float = Field(default=30.0, ge=0, le=3600)
    scale_down_after_s: float = Field(default=300.0, ge=0, le=86400)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_redis_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("node_providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        for name in _split_names(value):
            if name not in KNOWN_PROVIDERS:
                raise ValueError(f"unknown provider {name!r} (known: {', '.join(KNOWN_PROVIDERS)})")
        return value

    @field_validator("node_agent_control_plane_url")
    @classmethod
    def _control_plane(cls, value: str) -> str:
        return check_control_plane_url(value)

    @field_validator("node_agent_package")
    @classmethod
    def _agent_package(cls, value: str, info: ValidationInfo) -> str:
        return check_agent_package(value, info.data.get("node_agent_control_plane_url", ""))

    @field_validator("vllm_version")
    @classmethod
    def _vllm_version(cls, value: str) -> str:
        return check_vllm_version(value)

    @field_validator("skypilot_api_server_endpoint")
    @classmethod
    def _endpoint(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            if "skypilot" in _split_names(info.data.get("node_providers", "")):
                raise ValueError("required when NODE_PROVIDERS names skypilot")
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

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
    def task_settings(self) -> TaskSettings:
        return TaskSettings(
            vllm_version=self.vllm_version,
            vllm_port=self.vllm_port,
            control_plane_url=self.node_agent_control_plane_url,
            agent_package=self.node_agent_package,
        )

    @property
    def local_sim_argv(self) -> list[str]:
        return shlex.split(self.local_sim_command)


def _split_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]
