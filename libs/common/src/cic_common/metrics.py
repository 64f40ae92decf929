"""The Prometheus metrics server and the metrics every gRPC server shares."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GrpcMetrics:
    """gRPC server metrics, registered in the registry given (the default one in
    production, a fresh one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.server_handled = Counter(
            "cic_grpc_server_handled_total",
            "gRPC calls handled, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.server_latency = Histogram(
            "cic_grpc_server_handling_seconds",
            "Time to handle a gRPC call",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )


def start_metrics_server(port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serves ``/metrics`` on ``port`` (0 picks a free one) in a daemon thread; returns the port."""
    server, _thread = start_http_server(port, registry=registry)
    return int(server.server_port)
