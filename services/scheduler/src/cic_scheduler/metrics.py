"""The scheduler's own Prometheus metrics (gRPC server metrics come from cic_common)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from cic_common.metrics import Children
from cic_scheduler.nodes import BreakerState, NodeState, NodeStatus, NodeView

_PICK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

# Picks of a model nobody serves are counted under this label, so that clients sending made-up
# model names cannot grow the label set without bound.
UNKNOWN_MODEL_LABEL = "_unknown"


# The breaker state gauge's values.
BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


def breaker_state_value(node: NodeView | NodeStatus) -> int:
    return BREAKER_STATE_VALUES[node.breaker]


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.pick_seconds = Histogram(
            "cic_scheduler_pick_duration_seconds",
            "Time to choose a node and take a lease on it",
            buckets=_PICK_BUCKETS,
            registry=registry,
        )
        self.picks = Counter(
            "cic_scheduler_picks_total",
            "Picks by model, routing policy and outcome (ok, no_node, unknown_model)",
            ["model", "policy", "outcome"],
            registry=registry,
        )
        self.releases = Counter(
            "cic_scheduler_releases_total",
            "Leases given back, by the outcome the caller reported",
            ["outcome"],
            registry=registry,
        )
        self.unknown_lease_releases = Counter(
            "cic_scheduler_unknown_lease_releases_total",
            "Releases of a lease the scheduler no longer holds (expired, or its node removed)",
            registry=registry,
        )
        self.leases_expired = Counter(
            "cic_scheduler_leases_expired_total",
            "Leases given back by the sweeper because nobody released them within LEASE_TTL_S",
            registry=registry,
        )
        self.released_tokens = Counter(
            "cic_scheduler_released_tokens_total",
            "Tokens reported on release, by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=registry,
        )
        self.probe_failures = Counter(
            "cic_scheduler_probe_failures_total",
            "Failed node health probes (error status, refused, timed out)",
            registry=registry,
        )
        self.node_in_flight = Gauge(
            "cic_scheduler_node_in_flight",
            "Leases in flight per node",
            ["node_id", "model"],
            registry=registry,
        )
        self.node_breaker_state = Gauge(
            "cic_scheduler_node_breaker_state",
            "Circuit breaker per node: 0 closed (takes traffic), 1 open, 2 half-open",
            ["node_id", "model"],
            registry=registry,
        )
        self.load_scrape_failures = Counter(
            "cic_scheduler_load_scrape_failures_total",
            "Failed scrapes of a node's /metrics (error status, refused, timed out, not vLLM's)",
            registry=registry,
        )
        self.signals_collector = Gauge(
            "cic_scheduler_signals_collector",
            "1 while this replica is the one scraping and probing the nodes, else 0",
            registry=registry,
        )
        self.nodes = Gauge(
            "cic_scheduler_nodes",
            "Registered nodes by state and health",
            ["state", "healthy"],
            registry=registry,
        )

        # The children a pick or release sets, looked up without labels() (see Children).
        self.pick_outcomes = Children(self.picks)
        self.release_outcomes = Children(self.releases)
        self.released_token_kinds = Children(self.released_tokens)
        self._node_in_flight = Children(self.node_in_flight)
        self._node_breaker_state = Children(self.node_breaker_state)

    def set_in_flight(self, node: NodeView | NodeStatus) -> None:
        self._node_in_flight(node.id, node.model).set(node.in_flight)
        self._node_breaker_state(node.id, node.model).set(breaker_state_value(node))

    def refresh_nodes(self, nodes: Iterable[NodeView | NodeStatus]) -> None:
        """Sets the node gauges from a snapshot of the whole registry (removed nodes included)."""
        counts = {(s.value, h): 0 for s in NodeState for h in ("true", "false")}
        present = set()
        for node in nodes:
            counts[(node.state.value, "true" if node.healthy else "false")] += 1
            self.set_in_flight(node)
            present.add((node.id, node.model))
        for stale in self._node_in_flight.labelled() - present:
            self._node_in_flight.remove(*stale)
            self._node_breaker_state.remove(*stale)
        for (state, healthy), count in counts.items():
            self.nodes.labels(state, healthy).set(count)
