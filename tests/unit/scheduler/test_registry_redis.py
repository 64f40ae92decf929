"""The Redis registry on its own, with a clock the test controls."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cic_common.redis import create_redis
from cic_scheduler.nodes import (
    LoadSample,
    ModelNotServed,
    NodeNotFound,
    NodeSpec,
    NodeState,
    NodeTerminated,
    NoReadyNode,
    Outcome,
    PickRequest,
)
from cic_scheduler.policy import LeastLoadedPolicy
from cic_scheduler.registry_redis import RedisNodeRegistry
from tests.unit.scheduler.conftest import MakeRegistry

LEAST = LeastLoadedPolicy()


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(make_registry: MakeRegistry, clock: Clock) -> RedisNodeRegistry:
    return make_registry(lease_ttl_s=10.0, breaker_failures=2, clock=clock)


def spec(node_id: str = "n1", model: str = "m", **fields) -> NodeSpec:
    return NodeSpec(id=node_id, model=model, endpoint=f"http://{node_id}:1", **fields)


async def test_a_node_round_trips_through_redis(registry: RedisNodeRegistry) -> None:
    labels = {"cloud": "aws", "region": "us-east-1", "accelerator": "L4"}
    registered = await registry.register(spec(labels=labels))
    [listed] = await registry.list_nodes()
    assert listed == registered
    assert (listed.id, listed.model, listed.endpoint) == ("n1", "m", "http://n1:1")
    assert (listed.state, listed.labels, listed.in_flight) == (NodeState.READY, labels, 0)
    assert listed.healthy and listed.load is None


async def test_a_lease_expires_exactly_at_its_ttl(
    registry: RedisNodeRegistry, clock: Clock
) -> None:
    await registry.register(spec())
    old = await registry.acquire(PickRequest("m"), LEAST)
    clock.advance(5)
    young = await registry.acquire(PickRequest("m"), LEAST)
    clock.advance(4.999)
    assert await registry.expire_leases() == []
    clock.advance(0.001)
    expired = await registry.expire_leases()
    assert [(e.lease_id, e.node_id) for e in expired] == [(old.lease_id, "n1")]
    assert (await registry.list_nodes())[0].in_flight == 1
    assert (await registry.release(old.lease_id, Outcome.SUCCESS)).known is False
    assert (await registry.release(young.lease_id, Outcome.SUCCESS)).known is True


async def test_replicas_sweeping_together_give_each_lease_back_once(
    make_registry: MakeRegistry, clock: Clock
) -> None:
    replicas = [make_registry(lease_ttl_s=1.0, clock=clock) for _ in range(3)]
    await replicas[0].register(spec())
    for _ in range(30):
        await replicas[0].acquire(PickRequest("m"), LEAST)
    clock.advance(1)
    swept = await asyncio.gather(*(r.expire_leases() for r in replicas for _ in range(4)))
    assert sum(len(batch) for batch in swept) == 30
    assert (await replicas[1].list_nodes())[0].in_flight == 0


async def test_heartbeat_records_the_wall_clock(registry: RedisNodeRegistry, clock: Clock) -> None:
    registered = await registry.register(spec())
    clock.advance(30)
    beat = await registry.heartbeat("n1")
    assert beat.last_heartbeat - registered.last_heartbeat == timedelta(seconds=30)
    with pytest.raises(NodeNotFound):
        await registry.heartbeat("gone")


async def test_drain_refuses_a_terminated_node(registry: RedisNodeRegistry) -> None:
    await registry.register(spec(state=NodeState.TERMINATED))
    with pytest.raises(NodeTerminated):
        await registry.drain("n1")
    with pytest.raises(NodeNotFound):
        await registry.drain("gone")


async def test_reregistering_under_another_model_moves_the_node(
    registry: RedisNodeRegistry,
) -> None:
    await registry.register(spec(model="a"))
    await registry.register(spec(model="b"))
    with pytest.raises(ModelNotServed):
        await registry.acquire(PickRequest("a"), LEAST)
    assert (await registry.acquire(PickRequest("b"), LEAST)).node.id == "n1"
    assert [n.id for n in await registry.list_nodes("b")] == ["n1"]
    assert await registry.list_nodes("a") == []


async def test_a_lease_from_before_a_deregistration_does_not_count_later(
    registry: RedisNodeRegistry,
) -> None:
    await registry.register(spec())
    lease = await registry.acquire(PickRequest("m"), LEAST)
    await registry.deregister("n1")
    await registry.register(spec())
    assert (await registry.release(lease.lease_id, Outcome.NODE_ERROR)).known is False
    assert (await registry.list_nodes())[0].in_flight == 0
    with pytest.raises(NodeNotFound):
        await registry.deregister("gone")


async def test_load_samples_are_stored_for_known_nodes_only(
    registry: RedisNodeRegistry,
) -> None:
    await registry.register(spec())
    sample = LoadSample(running=3, waiting=2, kv_cache_usage=0.5, scraped_at=1_900_000_000.5)
    await registry.update_load("n1", sample)
    await registry.update_load("gone", sample)
    [node] = await registry.list_nodes()
    assert node.load == sample
    assert [n.id for n in await registry.list_nodes()] == ["n1"]


async def test_probe_results_for_an_old_endpoint_are_ignored(
    registry: RedisNodeRegistry,
) -> None:
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://old:1"))
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://new:1"))
    for _ in range(3):
        assert await registry.record_probe("n1", "http://old:1", ok=False) is None
    assert (await registry.list_nodes())[0].healthy
    assert await registry.record_probe("gone", "http://new:1", ok=False) is None


async def test_probe_failures_open_the_breaker(registry: RedisNodeRegistry) -> None:
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://h:1"))
    first = await registry.record_probe("n1", "http://h:1", ok=False)
    second = await registry.record_probe("n1", "http://h:1", ok=False)
    assert first is not None and first.healthy
    assert second is not None and not second.healthy
    with pytest.raises(NoReadyNode):
        await registry.acquire(PickRequest("m"), LEAST)


async def test_picks_and_batched_releases_survive_a_script_cache_flush(
    registry: RedisNodeRegistry, redis_url: str
) -> None:
    await registry.register(spec())
    leases = [await registry.acquire(PickRequest("m"), LEAST) for _ in range(3)]
    flusher = create_redis(redis_url)
    try:
        await flusher.script_flush()
        lease = await registry.acquire(PickRequest("m"), LEAST)
        await flusher.script_flush()
        returns = [(held.lease_id, Outcome.SUCCESS) for held in [*leases, lease]]
        released = await registry.release_many([*returns, ("never-issued", Outcome.SUCCESS)])
    finally:
        await flusher.aclose()
    assert [r.known for r in released] == [True, True, True, True, False]
    assert (await registry.list_nodes())[0].in_flight == 0
