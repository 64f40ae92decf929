"""NodeScheduler on a real Redis registry, without gRPC: the order in which a round trip's
answers and its bookkeeping happen, and the node gauges' children."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from cic_scheduler.core import NodeScheduler
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.nodes import (
    BreakerState,
    Lease,
    LeaseReturn,
    NodeSpec,
    NodeState,
    NodeStatus,
    Outcome,
    PickRequest,
    SchedulerError,
)
from cic_scheduler.policy import LeastLoadedPolicy, RoutingPolicies
from tests.unit.scheduler.conftest import MakeRegistry


def _sample(prometheus: CollectorRegistry, name: str, **labels: str) -> float | None:
    return prometheus.get_sample_value(name, labels)


async def test_answers_go_out_before_the_bookkeeping(make_registry: MakeRegistry) -> None:
    prometheus = CollectorRegistry()
    scheduler = NodeScheduler(
        make_registry(), RoutingPolicies(LeastLoadedPolicy()), SchedulerMetrics(prometheus)
    )
    await scheduler.registry.register(NodeSpec(id="n1", model="m", endpoint="http://n1:1"))
    first = await scheduler.pick(PickRequest(model="m"))

    def counted() -> tuple[float | None, float | None]:
        picks = _sample(
            prometheus, "cic_scheduler_picks_total", model="m", policy="least_loaded", outcome="ok"
        )
        releases = _sample(prometheus, "cic_scheduler_releases_total", outcome="success")
        return picks, releases

    answered: list[list[Lease | SchedulerError]] = []
    seen_by_writer: list[tuple[float | None, float | None]] = []
    wake = asyncio.Event()

    async def writer() -> None:  # stands for the stream's writer, woken by the answer
        await wake.wait()
        seen_by_writer.append(counted())

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0)

    def answer(results: list[Lease | SchedulerError]) -> None:
        answered.append(results)
        wake.set()

    given_back, results = await scheduler.release_and_pick(
        [LeaseReturn(first.lease_id, Outcome.SUCCESS, 3, 4)], [PickRequest(model="m")], answer
    )
    await writing

    assert given_back
    assert answered == [results]
    [lease] = results
    assert isinstance(lease, Lease)
    assert lease.node.id == "n1"
    assert lease.node.in_flight == 1  # the release went first, in the same round trip
    # The writer ran before the second pick and the release were counted; both are counted now.
    assert seen_by_writer == [(1.0, None)]
    assert counted() == (2.0, 1.0)


def test_a_removed_nodes_gauges_come_back_when_it_does() -> None:
    prometheus = CollectorRegistry()
    metrics = SchedulerMetrics(prometheus)
    node = NodeStatus(
        id="n1", model="m", state=NodeState.READY, in_flight=2, breaker=BreakerState.CLOSED
    )

    def in_flight() -> float | None:
        return _sample(prometheus, "cic_scheduler_node_in_flight", node_id="n1", model="m")

    metrics.set_in_flight(node)
    assert in_flight() == 2
    metrics.refresh_nodes([])  # the node is gone: its gauges are removed
    assert in_flight() is None
    metrics.set_in_flight(dataclasses.replace(node, in_flight=5))
    assert in_flight() == 5
    breaker = _sample(prometheus, "cic_scheduler_node_breaker_state", node_id="n1", model="m")
    assert breaker == 0
