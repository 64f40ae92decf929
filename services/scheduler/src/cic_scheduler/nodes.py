"""What the scheduler knows about nodes and leases, independent of gRPC and of storage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class NodeState(StrEnum):
    LAUNCHING = "launching"
    READY = "ready"
    DRAINING = "draining"
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (NodeState.TERMINATED, NodeState.FAILED)


class Outcome(StrEnum):
    """How the request a lease was taken for ended."""

    UNSPECIFIED = "unspecified"
    SUCCESS = "success"
    NODE_ERROR = "node_error"
    CLIENT_ERROR = "client_error"


class BreakerState(StrEnum):
    """A node's circuit breaker: closed takes traffic, open takes none, half-open admits one
    trial pick across all replicas."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class NodeSpec:
    """What a registrant says about a node."""

    id: str
    model: str
    endpoint: str
    state: NodeState = NodeState.READY
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadSample:
    """A node's own load as last scraped from its vLLM ``/metrics``.

    ``running`` and ``waiting`` are request counts, ``kv_cache_usage`` is in 0..1 and
    ``scraped_at`` is the wall-clock time (seconds since the epoch) of the scrape.
    """

    running: float
    waiting: float
    kv_cache_usage: float
    scraped_at: float


@dataclass(frozen=True)
class NodeView:
    """A snapshot of one node as the registry holds it."""

    id: str
    model: str
    endpoint: str
    state: NodeState
    labels: Mapping[str, str]
    in_flight: int
    healthy: bool
    last_heartbeat: datetime
    load: LoadSample | None = None
    breaker: BreakerState = BreakerState.CLOSED


@dataclass(frozen=True)
class PickRequest:
    """What a pick is asked for; later policies (prefix affinity) add fields here."""

    model: str
    exclude_node_ids: frozenset[str] = frozenset()
    prefix_key: str = ""
    # Nodes labelled with this region are picked first (empty: no preference).
    region: str = ""


@dataclass(frozen=True)
class ExpiredLease:
    """A lease the sweeper gave back because nobody released it within its TTL."""

    lease_id: str
    node_id: str


@dataclass(frozen=True)
class Lease:
    """A slot taken on a node, given back by a release or by the sweeper after its TTL."""

    lease_id: str
    node: NodeView
    trial: bool = False  # the one pick a half-open breaker admits


@dataclass(frozen=True)
class LeaseReturn:
    """One lease given back by a caller, with how its request ended and the tokens it used."""

    lease_id: str
    outcome: Outcome
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The part of a node a release reports: what the metrics and the node watchers need, not
    the whole node (a release is as frequent as a pick, and reading the whole node costs Redis
    and this process more than the release itself)."""

    id: str
    model: str
    state: NodeState
    in_flight: int
    breaker: BreakerState

    @property
    def healthy(self) -> bool:
        return self.breaker is BreakerState.CLOSED


@dataclass(frozen=True)
class Release:
    """What a release did: the node it freed (None when the lease was unknown or expired), and
    whether it opened the node's breaker (took it out of rotation) or closed it (a trial's
    success)."""

    node: NodeStatus | None
    marked_unhealthy: bool = False
    breaker_closed: bool = False

    @property
    def known(self) -> bool:
        return self.node is not None


class SchedulerError(Exception):
    """A request the registry refuses; the message is safe to return to the caller."""


class RegistryUnavailable(SchedulerError):
    """Redis, where the registry lives, cannot be reached: the request may be tried again."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the node registry is unavailable: {reason}")


class NodeNotFound(SchedulerError):
    def __init__(self, node_id: str) -> None:
        super().__init__(f"node `{node_id}` is not registered")


class ModelNotServed(SchedulerError):
    def __init__(self, model: str) -> None:
        super().__init__(f"model `{model}` is not served")


class NoReadyNode(SchedulerError):
    def __init__(self, model: str) -> None:
        super().__init__(f"no ready node for model `{model}`")


class NodeTerminated(SchedulerError):
    def __init__(self, node_id: str, state: NodeState) -> None:
        super().__init__(f"node `{node_id}` is {state.value}")
