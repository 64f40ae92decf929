"""Every metric the gateway exports, registered in the registry given (a fresh one in tests).

Labels are of low cardinality only: a route is its pattern (``/admin/tenants/{id}``), a model
is one the scheduler knows (empty when the request never got that far), never a key or id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cic_common.events_bus import EventBusMetrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cic_gateway_requests_total",
            "HTTP requests answered, by route, status and model",
            ["route", "status", "model"],
            registry=registry,
        )
        self.latency = Histogram(
            "cic_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response (streams included)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "cic_gateway_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first chunk relayed to the client",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "cic_gateway_tokens_total",
            "Tokens the nodes reported, by model and kind (prompt or completion)",
            ["model", "kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "cic_gateway_requests_in_flight",
            "Requests being handled, by route",
            ["route"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "cic_gateway_upstream_errors_total",
            "Failures talking to a node, by kind (connect, timeout, reset, status_5xx, bad_stream)",
            ["kind"],
            registry=registry,
        )
        self.client_disconnects = Counter(
            "cic_gateway_client_disconnects_total",
            "Requests whose client went away before the response ended",
            registry=registry,
        )
        self.key_cache = Counter(
            "cic_gateway_key_cache_lookups_total",
            "API key lookups, by result (hit, miss; stale: the last known answer, Postgres away)",
            ["result"],
            registry=registry,
        )
        self.usage_sent = Counter(
            "cic_gateway_usage_events_sent_total",
            "Usage events billing accepted (duplicates included)",
            registry=registry,
        )
        self.usage_send_failures = Counter(
            "cic_gateway_usage_send_failures_total",
            "Failed attempts to send a batch of usage events to billing",
            registry=registry,
        )
        self.usage_dropped = Counter(
            "cic_gateway_usage_events_dropped_total",
            "Usage events given up on, by reason (buffer_full, rejected, shutdown)",
            ["reason"],
            registry=registry,
        )
        self.usage_buffered = Gauge(
            "cic_gateway_usage_events_buffered",
            "Usage events waiting to be sent to billing",
            registry=registry,
        )
        self.rate_limited = Counter(
            "cic_gateway_rate_limited_total",
            "Requests refused with 429, by scope (key, environment, tenant, global) and kind"
            " (requests, tokens, tokens_per_day, concurrent)",
            ["scope", "kind"],
            registry=registry,
        )
        self.ratelimit_errors = Counter(
            "cic_gateway_ratelimit_errors_total",
            "Rate-limit calls to Redis that failed or were skipped while it was down, by operation"
            " (check, settle)",
            ["operation"],
            registry=registry,
        )
        self.key_cache_invalidations = Counter(
            "cic_gateway_key_cache_invalidations_total",
            "Revocation messages applied to the key cache, by kind (key, tenant, environment, all)",
            ["kind"],
            registry=registry,
        )
        self.failovers = Counter(
            "cic_gateway_failovers_total",
            "Requests whose node failed before its first byte, by what followed"
            " (retried on another node, or no_other_node)",
            ["result"],
            registry=registry,
        )
        self.dependency_up = Gauge(
            "cic_gateway_dependency_up",
            "Whether a dependency answered its last probe (1) or not (0),"
            " by dependency (postgres, redis, scheduler, billing)",
            ["dependency"],
            registry=registry,
        )
        self.budget_refusals = Counter(
            "cic_gateway_budget_refusals_total",
            "Requests refused with 429 insufficient_quota because their tenant's or"
            " environment's budget or prepaid credit is spent, by scope (tenant, environment)",
            ["scope"],
            registry=registry,
        )
        self.budget_blocked_scopes = Gauge(
            "cic_gateway_budget_blocked_scopes",
            "Tenants and environments whose requests are refused (as last read from Redis)",
            registry=registry,
        )
        self.events = EventBusMetrics(registry)  # cic_events_published_total
