"""The orchestrator's own Prometheus metrics (gRPC server metrics come from cic_common)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cic_common.events_bus import EventBusMetrics

_LAUNCH_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.nodes = Gauge(
            "cic_orchestrator_nodes",
            "Nodes known to the orchestrator, by state and provider",
            ["state", "provider"],
            registry=registry,
        )
        self.launch_duration = Histogram(
            "cic_orchestrator_launch_duration_seconds",
            "Time from a launch (or adoption) request until the node's /health answered",
            ["provider"],
            buckets=_LAUNCH_BUCKETS,
            registry=registry,
        )
        self.launches = Counter(
            "cic_orchestrator_launches_total",
            "Node launches and adoptions that ended, by outcome (ready, failed, timeout)",
            ["provider", "outcome"],
            registry=registry,
        )
        self.scaling_decisions = Counter(
            "cic_orchestrator_scaling_decisions_total",
            "Autoscaler decisions by model, direction (up, down) and result "
            "(launched, refused, drained)",
            ["model", "direction", "result"],
            registry=registry,
        )
        self.desired_nodes = Gauge(
            "cic_orchestrator_desired_nodes",
            "Nodes the autoscaler wants for a model (its policy applied to the queue)",
            ["model"],
            registry=registry,
        )
        self.time_to_first_token = Gauge(
            "cic_orchestrator_time_to_first_token_seconds",
            "A model's mean time to first token on its ready nodes since the autoscaler's last "
            "look (models whose deployment has a latency target)",
            ["model"],
            registry=registry,
        )
        self.leader = Gauge(
            "cic_orchestrator_leader",
            "1 while this replica holds the leader lock and is active, else 0",
            registry=registry,
        )
        self.node_health = Gauge(
            "cic_orchestrator_node_health",
            "Ready nodes by health from three signals (agent heartbeats, /health probes, "
            "the provider's status): healthy, degraded, suspect",
            ["health"],
            registry=registry,
        )
        self._seen: set[tuple[str, str]] = set()
        self.events = EventBusMetrics(registry)  # cic_events_published_total

    def set_health_counts(self, counts: Mapping[str, int]) -> None:
        for health in ("healthy", "degraded", "suspect"):
            self.node_health.labels(health).set(counts.get(health, 0))

    def set_node_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Sets the node gauge to ``counts``; label pairs seen before and now absent go to 0."""
        for labels in self._seen - counts.keys():
            self.nodes.labels(*labels).set(0)
        for labels, count in counts.items():
            self.nodes.labels(*labels).set(count)
        self._seen |= counts.keys()
