"""The orchestrator's own Prometheus metrics (gRPC server metrics come from cic_common)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self._seen: set[tuple[str, str]] = set()

    def set_node_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Sets the node gauge to ``counts``; label pairs seen before and now absent go to 0."""
        for labels in self._seen - counts.keys():
            self.nodes.labels(*labels).set(0)
        for labels, count in counts.items():
            self.nodes.labels(*labels).set(count)
        self._seen |= counts.keys()
