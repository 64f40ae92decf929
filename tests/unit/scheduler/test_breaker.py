"""The circuit breaker per node, in Redis: its transitions, and exactly one half-open trial
however many pickers race, on several registries sharing one key prefix (replicas)."""

from __future__ import annotations

import asyncio

import pytest

from cic_scheduler.nodes import (
    BreakerState,
    Lease,
    NodeSpec,
    NoReadyNode,
    Outcome,
    PickRequest,
)
from cic_scheduler.policy import LeastLoadedPolicy
from cic_scheduler.registry_redis import RedisNodeRegistry
from tests.unit.scheduler.conftest import MakeRegistry
from tests.unit.scheduler.test_registry_redis import Clock

LEAST = LeastLoadedPolicy()
ENDPOINT = "http://n1:1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def replicas(make_registry: MakeRegistry, clock: Clock) -> list[RedisNodeRegistry]:
    return [make_registry(breaker_failures=3, breaker_open_s=10.0, clock=clock) for _ in range(3)]


async def _try_pick(registry: RedisNodeRegistry) -> Lease | None:
    try:
        return await registry.acquire(PickRequest("m"), LEAST)
    except NoReadyNode:
        return None


async def _breaker(registry: RedisNodeRegistry) -> BreakerState:
    return (await registry.list_nodes())[0].breaker


async def _open(registry: RedisNodeRegistry) -> None:
    for _ in range(3):
        lease = await registry.acquire(PickRequest("m"), LEAST)
        await registry.release(lease.lease_id, Outcome.NODE_ERROR)
    assert await _breaker(registry) is BreakerState.OPEN


async def _race(replicas: list[RedisNodeRegistry], per_replica: int) -> list[Lease]:
    picks = await asyncio.gather(*(_try_pick(r) for r in replicas for _ in range(per_replica)))
    return [p for p in picks if p is not None]


@pytest.fixture
async def opened(replicas: list[RedisNodeRegistry]) -> list[RedisNodeRegistry]:
    await replicas[0].register(NodeSpec(id="n1", model="m", endpoint=ENDPOINT))
    await _open(replicas[0])
    return replicas


async def test_consecutive_node_errors_open_it_exactly_once_under_concurrency(
    replicas: list[RedisNodeRegistry],
) -> None:
    await replicas[0].register(NodeSpec(id="n1", model="m", endpoint=ENDPOINT))
    leases = await _race(replicas, 100)
    assert len(leases) == 300
    releases = await asyncio.gather(
        *(
            replicas[i % 3].release(lease.lease_id, Outcome.NODE_ERROR)
            for i, lease in enumerate(leases)
        )
    )
    assert sum(r.marked_unhealthy for r in releases) == 1
    assert all(r.known for r in releases)
    node = (await replicas[1].list_nodes())[0]
    assert (node.breaker, node.healthy, node.in_flight) == (BreakerState.OPEN, False, 0)


async def test_an_open_breaker_admits_exactly_one_trial_after_its_open_time(
    opened: list[RedisNodeRegistry], clock: Clock
) -> None:
    clock.advance(9.999)
    assert await _race(opened, 50) == []
    clock.advance(0.001)
    assert await _breaker(opened[0]) is BreakerState.HALF_OPEN
    trials = await _race(opened, 100)
    assert len(trials) == 1 and trials[0].trial
    assert await _race(opened, 50) == []
    released = await opened[2].release(trials[0].lease_id, Outcome.SUCCESS)
    assert released.breaker_closed and released.node is not None and released.node.healthy
    after = await _race(opened, 10)
    assert len(after) == 30 and not any(lease.trial for lease in after)


async def test_a_failed_trial_opens_it_again(opened: list[RedisNodeRegistry], clock: Clock) -> None:
    clock.advance(10)
    [trial] = await _race(opened, 20)
    released = await opened[1].release(trial.lease_id, Outcome.NODE_ERROR)
    assert released.marked_unhealthy
    assert await _breaker(opened[0]) is BreakerState.OPEN
    clock.advance(9.9)
    assert await _race(opened, 10) == []
    clock.advance(0.1)
    assert len(await _race(opened, 10)) == 1


async def test_a_trial_that_says_nothing_about_the_node_lets_another_trial_in(
    opened: list[RedisNodeRegistry], clock: Clock
) -> None:
    clock.advance(10)
    [trial] = await _race(opened, 5)
    await opened[0].release(trial.lease_id, Outcome.CLIENT_ERROR)
    assert await _breaker(opened[0]) is BreakerState.HALF_OPEN
    [second] = await _race(opened, 5)
    assert second.trial


async def test_a_lost_trial_opens_it_again_when_its_lease_expires(
    make_registry: MakeRegistry, clock: Clock
) -> None:
    registry = make_registry(lease_ttl_s=30.0, breaker_failures=1, breaker_open_s=10.0, clock=clock)
    await registry.register(NodeSpec(id="n1", model="m", endpoint=ENDPOINT))
    await _open_once(registry)
    clock.advance(10)
    [trial] = await _race([registry], 5)
    clock.advance(30)
    assert [e.lease_id for e in await registry.expire_leases()] == [trial.lease_id]
    assert await _breaker(registry) is BreakerState.OPEN


async def _open_once(registry: RedisNodeRegistry) -> None:
    lease = await registry.acquire(PickRequest("m"), LEAST)
    assert (await registry.release(lease.lease_id, Outcome.NODE_ERROR)).marked_unhealthy


async def test_probes_close_it_only_once_half_open(
    opened: list[RedisNodeRegistry], clock: Clock
) -> None:
    registry = opened[0]
    ok = await registry.record_probe("n1", ENDPOINT, ok=True)
    assert ok is not None and ok.breaker is BreakerState.OPEN
    clock.advance(10)
    closed = await registry.record_probe("n1", ENDPOINT, ok=True)
    assert closed is not None and closed.breaker is BreakerState.CLOSED and closed.healthy


async def test_a_failed_probe_opens_a_half_open_breaker_again(
    opened: list[RedisNodeRegistry], clock: Clock
) -> None:
    clock.advance(10)
    [trial] = await _race(opened, 3)
    failed = await opened[1].record_probe("n1", ENDPOINT, ok=False)
    assert failed is not None and failed.breaker is BreakerState.OPEN
    assert (await opened[0].release(trial.lease_id, Outcome.SUCCESS)).breaker_closed is False
    assert await _breaker(opened[0]) is BreakerState.OPEN


async def test_a_success_between_node_errors_keeps_it_closed(
    replicas: list[RedisNodeRegistry],
) -> None:
    registry = replicas[0]
    await registry.register(NodeSpec(id="n1", model="m", endpoint=ENDPOINT))
    for outcome in [Outcome.NODE_ERROR] * 2 + [Outcome.SUCCESS] + [Outcome.NODE_ERROR] * 2:
        lease = await registry.acquire(PickRequest("m"), LEAST)
        await registry.release(lease.lease_id, outcome)
    assert await _breaker(registry) is BreakerState.CLOSED


async def test_registering_again_closes_it(opened: list[RedisNodeRegistry]) -> None:
    node = await opened[2].register(NodeSpec(id="n1", model="m", endpoint=ENDPOINT))
    assert node.breaker is BreakerState.CLOSED
    assert len(await _race(opened, 2)) == 6
