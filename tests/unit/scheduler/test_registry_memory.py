"""The in-memory registry on its own, with clocks the test controls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cic_scheduler.nodes import NodeSpec, NoReadyNode, Outcome, PickRequest
from cic_scheduler.policy import LeastLoadedPolicy
from cic_scheduler.registry_memory import InMemoryNodeRegistry


class Clocks:
    def __init__(self) -> None:
        self.seconds = 1000.0
        self.wall = datetime(2030, 1, 1, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def registry(clocks: Clocks) -> InMemoryNodeRegistry:
    return InMemoryNodeRegistry(
        lease_ttl_s=10.0,
        unhealthy_after_failures=2,
        monotonic=lambda: clocks.seconds,
        wall_clock=lambda: clocks.wall,
    )


async def test_a_lease_expires_exactly_at_its_ttl(
    registry: InMemoryNodeRegistry, clocks: Clocks
) -> None:
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://h:1"))
    old = await registry.acquire(PickRequest("m"), LeastLoadedPolicy())
    clocks.advance(5)
    young = await registry.acquire(PickRequest("m"), LeastLoadedPolicy())
    clocks.advance(4.999)
    assert await registry.expire_leases() == []
    clocks.advance(0.001)
    expired = await registry.expire_leases()
    assert [lease.lease_id for lease in expired] == [old.lease_id]
    assert expired[0].node.in_flight == 1
    assert (await registry.release(old.lease_id, Outcome.SUCCESS)).known is False
    assert (await registry.release(young.lease_id, Outcome.SUCCESS)).known is True


async def test_heartbeat_records_the_wall_clock(
    registry: InMemoryNodeRegistry, clocks: Clocks
) -> None:
    registered = await registry.register(NodeSpec(id="n1", model="m", endpoint="http://h:1"))
    clocks.advance(30)
    beat = await registry.heartbeat("n1")
    assert beat.last_heartbeat - registered.last_heartbeat == timedelta(seconds=30)


async def test_probe_results_for_an_old_endpoint_are_ignored(
    registry: InMemoryNodeRegistry,
) -> None:
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://old:1"))
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://new:1"))
    for _ in range(3):
        assert await registry.record_probe("n1", "http://old:1", ok=False) is None
    assert (await registry.list_nodes())[0].healthy
    assert await registry.record_probe("gone", "http://new:1", ok=False) is None


async def test_probe_failures_then_one_success(registry: InMemoryNodeRegistry) -> None:
    await registry.register(NodeSpec(id="n1", model="m", endpoint="http://h:1"))
    first = await registry.record_probe("n1", "http://h:1", ok=False)
    second = await registry.record_probe("n1", "http://h:1", ok=False)
    assert first is not None and first.healthy
    assert second is not None and not second.healthy
    with pytest.raises(NoReadyNode):
        await registry.acquire(PickRequest("m"), LeastLoadedPolicy())
    recovered = await registry.record_probe("n1", "http://h:1", ok=True)
    assert recovered is not None and recovered.healthy
    await registry.acquire(PickRequest("m"), LeastLoadedPolicy())
