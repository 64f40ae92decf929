"""Routing policies: how a pick chooses among the nodes that may serve a request.

The choice has to be atomic with taking the slot, across every scheduler replica, on live
in-flight counts, so it runs inside the registry's pick script (``lua/pick.lua``). A policy here
only says which rule the script applies and with which parameters:

- ``least_loaded`` (default): the lowest score, where score = leases in flight
  + ``waiting_weight`` x the node's waiting requests
  + ``kv_cache_weight`` x its KV-cache use (0..1), the load terms counting only while the
  node's load sample is at most ``max_sample_age_s`` old (an old or missing sample adds
  nothing: the queue-depth and KV-cache scorers of the Gateway API inference extension, with
  our own in-flight count as the base). Equal scores take turns (a per-model counter).
- ``round_robin``: the eligible nodes, ordered by id, in turn (the same per-model counter).
- ``prefix_affinity``: the node that owns the request's ``prefix_key`` by rendezvous hashing
  (the highest ``sha1(prefix_key NUL node_id)`` among the eligible nodes), so the same prefix
  meets a warm prefix cache, unless its score exceeds the least-loaded one's by more than
  ``max_extra_load``; then, and without a prefix key, least-loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

LEAST_LOADED = "least_loaded"
ROUND_ROBIN = "round_robin"
PREFIX_AFFINITY = "prefix_affinity"
POLICY_NAMES = (LEAST_LOADED, ROUND_ROBIN, PREFIX_AFFINITY)


@dataclass(frozen=True)
class LoadScoring:
    """How a node's own load sample weighs on its score, next to its leases in flight."""

    waiting_weight: float = 1.0
    kv_cache_weight: float = 4.0
    max_sample_age_s: float = 3.0


@dataclass(frozen=True)
class PickRule:
    """What the pick script is told: the rule's name and its parameters."""

    mode: str
    scoring: LoadScoring = field(default_factory=LoadScoring)
    max_extra_load: float = 0.0


class Policy(Protocol):
    name: str

    def rule(self) -> PickRule:
        """The rule the pick script applies for this policy."""
        ...


class LeastLoadedPolicy:
    name = LEAST_LOADED

    def __init__(self, scoring: LoadScoring | None = None) -> None:
        self._rule = PickRule(LEAST_LOADED, scoring or LoadScoring())

    def rule(self) -> PickRule:
        return self._rule


class RoundRobinPolicy:
    name = ROUND_ROBIN

    def __init__(self, scoring: LoadScoring | None = None) -> None:
        self._rule = PickRule(ROUND_ROBIN, scoring or LoadScoring())

    def rule(self) -> PickRule:
        return self._rule


class PrefixAffinityPolicy:
    name = PREFIX_AFFINITY

    def __init__(self, scoring: LoadScoring | None = None, max_extra_load: float = 4.0) -> None:
        self._rule = PickRule(PREFIX_AFFINITY, scoring or LoadScoring(), max_extra_load)

    def rule(self) -> PickRule:
        return self._rule


def make_policy(name: str, scoring: LoadScoring, max_extra_load: float) -> Policy:
    if name == ROUND_ROBIN:
        return RoundRobinPolicy(scoring)
    if name == PREFIX_AFFINITY:
        return PrefixAffinityPolicy(scoring, max_extra_load)
    if name == LEAST_LOADED:
        return LeastLoadedPolicy(scoring)
    raise ValueError(f"unknown routing policy `{name}` (one of {', '.join(POLICY_NAMES)})")


class RoutingPolicies:
    """The policy of each model: its own when configured, else the default."""

    def __init__(self, default: Policy, by_model: Mapping[str, Policy] | None = None) -> None:
        self.default = default
        self._by_model = dict(by_model or {})

    def for_model(self, model: str) -> Policy:
        return self._by_model.get(model, self.default)


def parse_policy_by_model(text: str) -> dict[str, str]:
    """``"model-a=round_robin,model-b=prefix_affinity"`` as a mapping; raises ``ValueError``."""
    chosen: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not model or name not in POLICY_NAMES:
            raise ValueError(
                f"`{item}` is not model=policy with a policy among {', '.join(POLICY_NAMES)}"
            )
        chosen[model] = name
    return chosen
