"""The scheduler's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from pydantic import Field, field_validator

from cic_common.settings import GrpcServiceSettings, RedisUrl
from cic_scheduler.policy import POLICY_NAMES, LoadScoring, parse_policy_by_model


class SchedulerSettings(GrpcServiceSettings):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # How often every node's ``GET {endpoint}/health`` is called, and how long one call may take.
    health_probe_interval_s: float = Field(default=2.0, gt=0, le=3600)
    health_probe_timeout_s: float = Field(default=2.0, gt=0, le=600)
    # The registry every replica shares; every key the scheduler writes starts with the prefix.
    redis_url: RedisUrl
    redis_key_prefix: str = Field(default="cic:", max_length=200)
    # A node's circuit breaker opens after this many consecutive node errors reported on release
    # (or this many consecutive failed probes), stays open this long, then admits one trial pick.
    breaker_failures: int = Field(default=3, ge=1, le=1000)
    breaker_open_s: float = Field(default=10.0, ge=0, le=3600)
    # Policy of every model (least_loaded, round_robin, prefix_affinity), and per-model exceptions
    # as "model-a=round_robin,model-b=prefix_affinity".
    routing_policy: str = "least_loaded"
    routing_policy_by_model: str = ""
    # Least-loaded score = in flight + these weights x the node's waiting requests and KV-cache
    # use (0..1), from a load sample at most LOAD_SAMPLE_MAX_AGE_S old (else no load term).
    load_waiting_weight: float = Field(default=1.0, ge=0, le=1000)
    load_kv_cache_weight: float = Field(default=4.0, ge=0, le=1000)
    load_sample_max_age_s: float = Field(default=3.0, gt=0, le=3600)
    # Prefix affinity keeps a prefix on its node while that node's score is at most this much
    # above the least-loaded node's.
    prefix_affinity_max_extra_load: float = Field(default=4.0, ge=0, le=100000)
    # How often every node's vLLM ``GET {endpoint}/metrics`` is scraped for its load, and how
    # long one scrape may take.
    load_scrape_interval_s: float = Field(default=1.0, gt=0, le=60)
    load_scrape_timeout_s: float = Field(default=0.4, gt=0, le=60)
    # Scrape and probe the nodes in a process of their own beside this one (see signals.py), so
    # that that work never holds up a pick; false: on the event loop that serves the picks.
    signals_process: bool = True
    # A lease not released within this time is given back by the sweeper.
    lease_ttl_s: float = Field(default=600.0, gt=0, le=86400)

    @property
    def signals_collector_ttl_s(self) -> float:
        """How long the replica scraping and probing the nodes holds that role without renewing
        it (it renews every scrape round): another replica takes over this long after it dies."""
        return max(3 * (self.load_scrape_interval_s + self.load_scrape_timeout_s), 1.0)

    @property
    def lease_sweep_interval_s(self) -> float:
        """Sweeps often enough that a lease outlives its TTL by a quarter of it at most (≤ 10 s)."""
        return min(max(self.lease_ttl_s / 4, 0.01), 10.0)

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICY_NAMES:
            raise ValueError(f"must be one of {', '.join(POLICY_NAMES)}")
        return value

    @field_validator("routing_policy_by_model")
    @classmethod
    def _policies_by_model(cls, value: str) -> str:
        parse_policy_by_model(value)
        return value

    @property
    def load_scoring(self) -> LoadScoring:
        return LoadScoring(
            waiting_weight=self.load_waiting_weight,
            kv_cache_weight=self.load_kv_cache_weight,
            max_sample_age_s=self.load_sample_max_age_s,
        )
