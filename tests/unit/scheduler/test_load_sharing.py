"""Scheduler replicas share the node signals: one of them (the holder of a small Redis key)
scrapes and probes every node; when it stops, another takes over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import RunningScheduler, eventually
from tests.unit.scheduler.test_load import FAST
from tests.unit.scheduler.vllm_metrics import OldVllmMetrics, scrapes_pass

COLLECTOR = "cic_scheduler_signals_collector"


@pytest.fixture
async def old_node() -> AsyncIterator[OldVllmMetrics]:
    node = OldVllmMetrics(running=2, waiting=7, gpu_cache=0.75)
    await node.start()
    yield node
    await node.stop()


async def _collectors(*schedulers: RunningScheduler) -> list[float | None]:
    await asyncio.sleep(0)
    return [s.metrics.get_sample_value(COLLECTOR) for s in schedulers]


async def test_one_replica_collects_and_another_takes_over_when_it_stops(
    start_scheduler: StartScheduler, old_node: OldVllmMetrics
) -> None:
    first = await start_scheduler(**FAST)
    second = await start_scheduler(**FAST)
    await first.register("old", "m", endpoint=old_node.endpoint)

    roles = await eventually(lambda: _collectors(first, second), lambda roles: 1.0 in roles)
    await scrapes_pass(old_node, 5)
    assert await _collectors(first, second) == roles, "one replica collects, the same one"
    assert sorted(roles) == [0.0, 1.0]
    leader, follower = (first, second) if roles[0] == 1.0 else (second, first)
    await eventually(lambda: follower.nodes(), lambda nodes: nodes["old"].HasField("load"))

    await leader.service.stop(0)
    await eventually(lambda: _collectors(follower), lambda roles: roles == [1.0])
    await scrapes_pass(old_node, 3)
