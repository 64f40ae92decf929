"""The pick index: picks read a per-model ranking kept up to date by every registry change, and
choose exactly what a full scan of the nodes would; region preference with fallback."""

from __future__ import annotations

import random

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_common.redis import create_redis
from cic_scheduler.nodes import (
    BreakerState,
    LoadSample,
    ModelNotServed,
    NodeSpec,
    NodeState,
    NodeView,
    NoReadyNode,
    Outcome,
    PickRequest,
)
from cic_scheduler.policy import LeastLoadedPolicy, LoadScoring, RoundRobinPolicy
from cic_scheduler.registry_redis import RedisNodeRegistry
from tests.unit.scheduler.conftest import MakeRegistry, StartScheduler
from tests.unit.scheduler.test_registry_redis import Clock

SCORING = LoadScoring(waiting_weight=1.0, kv_cache_weight=4.0, max_sample_age_s=3.0)
LEAST = LeastLoadedPolicy(SCORING)
OPEN_S = 10.0


def _score(node: NodeView, now: float) -> float:
    """A node's least-loaded score, computed from its listed state (the reference)."""
    score = float(node.in_flight)
    if node.load is not None and now - node.load.scraped_at <= SCORING.max_sample_age_s:
        score += SCORING.waiting_weight * node.load.waiting
        score += SCORING.kv_cache_weight * node.load.kv_cache_usage
    return score


def _closed(nodes: list[NodeView], excluded: frozenset[str]) -> list[NodeView]:
    """Nodes a pick may choose without a trial: ready, breaker closed, not excluded."""
    return [
        n
        for n in nodes
        if n.state is NodeState.READY and n.id not in excluded and n.breaker is BreakerState.CLOSED
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.parametrize("seed", range(6))
async def test_least_loaded_picks_what_a_full_scan_would_under_random_changes(
    make_registry: MakeRegistry, clock: Clock, seed: int
) -> None:
    rng = random.Random(seed)
    registry = make_registry(clock=clock, breaker_failures=2, breaker_open_s=OPEN_S)
    ids = [f"n{i:02d}" for i in range(12)]
    for node_id in ids:
        await registry.register(NodeSpec(node_id, "m", f"http://{node_id}:1"))
    leases: list[str] = []
    picks = 0
    for _ in range(400):
        op = rng.random()
        node_id = rng.choice(ids)
        if op < 0.15:
            age = rng.choice([0.0, 1.0, 2.5, 5.0])
            sample = LoadSample(
                running=0.0,
                waiting=float(rng.randint(0, 6)),
                kv_cache_usage=rng.random(),
                scraped_at=clock.now - age,
            )
            await registry.update_load(node_id, sample)
        elif op < 0.2:
            clock.advance(rng.choice([0.5, 1.0, 4.0, 11.0]))
        elif op < 0.25:
            await registry.drain(node_id)
        elif op < 0.3:
            await registry.register(NodeSpec(node_id, "m", f"http://{node_id}:1"))
        elif op < 0.35:
            await registry.record_probe(node_id, f"http://{node_id}:1", ok=rng.random() < 0.5)
        elif op < 0.6 and leases:
            lease = leases.pop(rng.randrange(len(leases)))
            outcome = rng.choice([Outcome.SUCCESS, Outcome.SUCCESS, Outcome.NODE_ERROR])
            await registry.release(lease, outcome)
        else:
            excluded = frozenset(rng.sample(ids, rng.randint(0, 2)))
            nodes = await registry.list_nodes("m")
            closed = _closed(nodes, excluded)
            try:
                lease = await registry.acquire(PickRequest("m", excluded), LEAST)
            except NoReadyNode:
                assert not closed, f"no node picked but {[n.id for n in closed]} could take it"
                continue
            picks += 1
            leases.append(lease.lease_id)
            before = {n.id: n for n in nodes}[lease.node.id]
            assert before.state is NodeState.READY and before.id not in excluded
            if lease.trial:
                assert before.breaker is BreakerState.HALF_OPEN and not before.healthy
            else:
                # A least-loaded pick without a trial has the lowest reference score.
                assert before in closed, f"picked {before.id}, whose breaker is not closed"
                lowest = min(_score(n, clock.now) for n in closed)
                assert _score(before, clock.now) == pytest.approx(lowest), (
                    f"picked {before.id} at {_score(before, clock.now)}, lowest was {lowest}"
                )
    assert picks > 50


async def test_a_stale_sample_stops_counting_for_a_node_far_down_the_ranking(
    make_registry: MakeRegistry, clock: Clock
) -> None:
    """Marking stale samples is exact, not limited to the front of the ranking."""
    registry = make_registry(clock=clock)
    for i in range(20):
        await registry.register(NodeSpec(f"n{i:02d}", "m", f"http://n{i}:1"))
    for i in range(19):
        await registry.update_load(f"n{i:02d}", LoadSample(0, 1.0, 0.0, clock.now))
    await registry.update_load("n19", LoadSample(0, 50.0, 0.0, clock.now - 2.0))
    first = await registry.acquire(PickRequest("m"), LEAST)
    assert first.node.id != "n19"
    clock.advance(1.5)  # n19's sample is now 3.5 s old, the others' 1.5 s
    second = await registry.acquire(PickRequest("m"), LEAST)
    assert second.node.id == "n19"


async def test_picks_prefer_the_requested_region_and_fall_back_to_others(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry()
    for node_id, region in (("a", "us-east"), ("b", "us-east"), ("c", "eu-west"), ("d", "")):
        labels = {"region": region} if region else {}
        await registry.register(NodeSpec(node_id, "m", f"http://{node_id}:1", labels=labels))
    in_eu = [
        (await registry.acquire(PickRequest("m", region="eu-west"), LEAST)).node.id
        for _ in range(5)
    ]
    assert in_eu == ["c"] * 5, "the region's only node takes every request, however busy"
    in_us = {
        (await registry.acquire(PickRequest("m", region="us-east"), LEAST)).node.id
        for _ in range(4)
    }
    assert in_us == {"a", "b"}
    await registry.drain("c")
    fallback = await registry.acquire(PickRequest("m", region="eu-west"), LEAST)
    assert fallback.node.id == "d", "with none ready in the region, the least-loaded elsewhere"
    unknown = await registry.acquire(PickRequest("m", region="ap-south"), RoundRobinPolicy())
    assert unknown.node.id in {"a", "b", "d"}
    excluded = await registry.acquire(
        PickRequest("m", exclude_node_ids=frozenset({"a", "b"}), region="us-east"), LEAST
    )
    assert excluded.node.id == "d"


async def test_a_node_that_moves_region_or_model_leaves_its_old_ranking(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry()
    await registry.register(NodeSpec("a", "m", "http://a:1", labels={"region": "r1"}))
    await registry.register(NodeSpec("a", "m", "http://a:1", labels={"region": "r2"}))
    await registry.register(NodeSpec("b", "m", "http://b:1", labels={"region": "r1"}))
    for _ in range(3):
        assert (await registry.acquire(PickRequest("m", region="r1"), LEAST)).node.id == "b"
    await registry.register(NodeSpec("b", "other", "http://b:1", labels={"region": "r1"}))
    assert (await registry.acquire(PickRequest("m", region="r1"), LEAST)).node.id == "a"
    await registry.deregister("a")
    with pytest.raises(ModelNotServed):
        await registry.acquire(PickRequest("m"), LEAST)


async def test_an_index_lost_or_written_before_it_existed_is_rebuilt_at_start(
    make_registry: MakeRegistry, redis_url: str
) -> None:
    registry: RedisNodeRegistry = make_registry()
    for node_id in ("a", "b"):
        await registry.register(NodeSpec(node_id, "m", f"http://{node_id}:1"))
    held = await registry.acquire(PickRequest("m"), LEAST)
    redis = create_redis(redis_url)
    try:
        index = [k async for k in redis.scan_iter(f"{registry.prefix}ready:*")]
        assert index
        await redis.delete(*index)
    finally:
        await redis.aclose()
    with pytest.raises(NoReadyNode):
        await registry.acquire(PickRequest("m"), LEAST)
    assert await registry.reindex(SCORING) == 2
    other = await registry.acquire(PickRequest("m"), LEAST)
    assert other.node.id != held.node.id, "the rebuilt ranking counts the lease in flight"


async def test_the_pick_rpc_carries_the_region(start_scheduler: StartScheduler) -> None:
    scheduler = await start_scheduler()
    await scheduler.register("near", labels={"region": "eu-west"})
    await scheduler.register("far", labels={"region": "us-east"})
    for _ in range(3):
        reply = await scheduler.stub.PickNode(pb.PickNodeRequest(model="m", region="eu-west"))
        assert reply.node.id == "near"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await scheduler.stub.PickNode(pb.PickNodeRequest(model="m", region="x" * 300))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "region" in (refused.value.details() or "")
