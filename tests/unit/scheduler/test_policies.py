"""The routing policies as the pick script applies them: least-loaded with load samples,
round-robin, prefix affinity within its bound, and the per-model choice of policy."""

from __future__ import annotations

from collections import Counter

import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_scheduler.nodes import LoadSample, NodeSpec, Outcome, PickRequest
from cic_scheduler.policy import (
    LeastLoadedPolicy,
    LoadScoring,
    Policy,
    PrefixAffinityPolicy,
    RoundRobinPolicy,
    parse_policy_by_model,
)
from cic_scheduler.registry_redis import RedisNodeRegistry
from tests.unit.scheduler.conftest import MakeRegistry
from tests.unit.scheduler.test_registry_redis import Clock

SCORING = LoadScoring(waiting_weight=1.0, kv_cache_weight=4.0, max_sample_age_s=3.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(make_registry: MakeRegistry, clock: Clock) -> RedisNodeRegistry:
    registry = make_registry(clock=clock)
    for node_id in ("a", "b", "c", "d"):
        await registry.register(NodeSpec(id=node_id, model="m", endpoint=f"http://{node_id}:1"))
    return registry


async def _picks(
    registry: RedisNodeRegistry, policy: Policy, count: int, key: str = "", release: bool = False
) -> list[str]:
    chosen = []
    for _ in range(count):
        lease = await registry.acquire(PickRequest("m", prefix_key=key), policy)
        chosen.append(lease.node.id)
        if release:
            await registry.release(lease.lease_id, Outcome.SUCCESS)
    return chosen


async def _load(registry: RedisNodeRegistry, node_id: str, at: float, **load: float) -> None:
    sample = {"running": 0.0, "waiting": 0.0, "kv_cache_usage": 0.0, **load}
    await registry.update_load(node_id, LoadSample(scraped_at=at, **sample))


async def test_least_loaded_counts_waiting_requests_and_kv_cache_use(
    registry: RedisNodeRegistry, clock: Clock
) -> None:
    await _load(registry, "a", clock.now, waiting=3)  # score 3
    await _load(registry, "b", clock.now, kv_cache_usage=0.5)  # score 2
    await _load(registry, "c", clock.now, waiting=1, kv_cache_usage=0.25)  # score 2
    chosen = await _picks(registry, LeastLoadedPolicy(SCORING), 9)
    assert chosen[:2] == ["d", "d"]  # scores 0, 1 against 2, 2, 3
    assert Counter(chosen[2:5]) == {"b": 1, "c": 1, "d": 1}  # a tie at 2 takes turns
    assert Counter(chosen[5:9]) == {"a": 1, "b": 1, "c": 1, "d": 1}  # all at 3


async def test_a_stale_load_sample_counts_as_no_load(
    registry: RedisNodeRegistry, clock: Clock
) -> None:
    await _load(registry, "a", clock.now - 3.001, waiting=50, kv_cache_usage=1.0)
    chosen = await _picks(registry, LeastLoadedPolicy(SCORING), 8)
    assert Counter(chosen) == {"a": 2, "b": 2, "c": 2, "d": 2}


async def test_round_robin_takes_turns_whatever_the_load(
    registry: RedisNodeRegistry, clock: Clock
) -> None:
    await _load(registry, "a", clock.now, waiting=100)
    chosen = await _picks(registry, RoundRobinPolicy(), 12)
    assert sorted(chosen[:4]) == ["a", "b", "c", "d"]
    assert chosen[4:8] == chosen[:4] and chosen[8:] == chosen[:4]


async def test_prefix_affinity_keeps_a_prefix_on_its_node_within_the_bound(
    registry: RedisNodeRegistry,
) -> None:
    policy = PrefixAffinityPolicy(SCORING, max_extra_load=4)
    leases = [await registry.acquire(PickRequest("m", prefix_key="p1"), policy) for _ in range(6)]
    owner = leases[0].node.id
    assert [lease.node.id for lease in leases[:5]] == [owner] * 5  # 0..4 over idle nodes
    assert leases[5].node.id != owner  # 5 over idle nodes: least-loaded instead
    await registry.release(leases[0].lease_id, Outcome.SUCCESS)
    assert await _picks(registry, policy, 1, "p1") == [owner]


async def test_prefix_affinity_spreads_keys_and_moves_only_a_removed_nodes_keys(
    registry: RedisNodeRegistry,
) -> None:
    policy = PrefixAffinityPolicy(SCORING, max_extra_load=4)
    keys = [f"prefix-{i}" for i in range(60)]
    owners = {key: (await _picks(registry, policy, 1, key, release=True))[0] for key in keys}
    assert set(owners.values()) == {"a", "b", "c", "d"}
    assert owners == {
        key: (await _picks(registry, policy, 1, key, release=True))[0] for key in keys
    }
    await registry.deregister("d")
    after = {key: (await _picks(registry, policy, 1, key, release=True))[0] for key in keys}
    assert {k: v for k, v in after.items() if owners[k] != "d"} == {
        k: v for k, v in owners.items() if v != "d"
    }


async def test_prefix_affinity_without_a_key_is_least_loaded(registry: RedisNodeRegistry) -> None:
    chosen = await _picks(registry, PrefixAffinityPolicy(SCORING), 8)
    assert Counter(chosen) == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_policy_by_model_parses_and_refuses_unknown_policies() -> None:
    assert parse_policy_by_model(" a=round_robin, b = prefix_affinity ,") == {
        "a": "round_robin",
        "b": "prefix_affinity",
    }
    for bad in ("a=fastest", "a", "=least_loaded"):
        with pytest.raises(ValueError):
            parse_policy_by_model(bad)


async def test_each_model_uses_its_configured_policy(start_scheduler) -> None:
    scheduler = await start_scheduler(
        ROUTING_POLICY="round_robin", ROUTING_POLICY_BY_MODEL="sticky=prefix_affinity"
    )
    for node_id in ("s1", "s2", "s3"):
        await scheduler.register(node_id, model="sticky")
        await scheduler.register(f"r-{node_id}", model="m")
    sticky = [
        await scheduler.stub.PickNode(pb.PickNodeRequest(model="sticky", prefix_key="k"))
        for _ in range(4)
    ]
    assert len({p.node.id for p in sticky}) == 1
    plain = [await scheduler.pick() for _ in range(3)]
    assert len({p.node.id for p in plain}) == 3
    policy_picks = {
        name: scheduler.sample("cic_scheduler_picks_total", model=m, policy=name, outcome="ok")
        for m, name in (("sticky", "prefix_affinity"), ("m", "round_robin"))
    }
    assert policy_picks == {"prefix_affinity": 4, "round_robin": 3}
