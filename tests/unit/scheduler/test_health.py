"""Active health probes of each node's /health, against a real HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_scheduler.health import HealthProber
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.nodes import NodeSpec, NodeState
from tests.unit.scheduler.conftest import MakeRegistry
from tests.unit.scheduler.support import FakeNodeHealth, eventually, rpc_error

FAST_PROBES = {
    "HEALTH_PROBE_INTERVAL_S": "0.05",
    "HEALTH_PROBE_TIMEOUT_S": "1",
    "BREAKER_FAILURES": "2",
    "BREAKER_OPEN_S": "0.2",
}


def healthy_flag(node_id: str):
    return lambda nodes: nodes[node_id].healthy


def unhealthy_flag(node_id: str):
    return lambda nodes: not nodes[node_id].healthy


async def test_failing_health_takes_a_node_out_until_it_answers_again(
    start_scheduler, node_health: FakeNodeHealth
) -> None:
    scheduler = await start_scheduler(**FAST_PROBES)
    node = await scheduler.register("n1", endpoint=node_health.endpoint)
    assert node.healthy
    await eventually(lambda: _calls(node_health), lambda calls: calls >= 2)
    assert (await scheduler.nodes())["n1"].healthy

    node_health.status = 500
    await eventually(scheduler.nodes, unhealthy_flag("n1"))
    assert scheduler.sample("cic_scheduler_probe_failures_total") >= 2
    err = await rpc_error(scheduler.pick())
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    node_health.status = 200
    await eventually(scheduler.nodes, healthy_flag("n1"))
    assert (await scheduler.pick()).node.id == "n1"


async def test_a_node_that_stops_answering_becomes_unhealthy(
    start_scheduler, node_health: FakeNodeHealth
) -> None:
    scheduler = await start_scheduler(**FAST_PROBES)
    await scheduler.register("n1", endpoint=node_health.endpoint)
    await node_health.stop()
    await eventually(scheduler.nodes, unhealthy_flag("n1"))
    await node_health.start()
    await eventually(scheduler.nodes, healthy_flag("n1"))


async def test_a_probe_success_ends_passive_unhealthiness(
    start_scheduler, node_health: FakeNodeHealth
) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="1", BREAKER_OPEN_S="0")
    await scheduler.register("n1", endpoint=node_health.endpoint)
    lease = await scheduler.pick()
    await scheduler.release(lease.lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    assert not (await scheduler.nodes())["n1"].healthy
    await scheduler.service.signals.prober.probe_all()
    assert (await scheduler.nodes())["n1"].healthy


async def _calls(server: FakeNodeHealth) -> int:
    return server.calls


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_one_probe_round_counts_failures_until_the_threshold(
    node_health: FakeNodeHealth, session: aiohttp.ClientSession, make_registry: MakeRegistry
) -> None:
    registry = make_registry(breaker_failures=3, breaker_open_s=0)
    metrics_registry = CollectorRegistry()
    metrics = SchedulerMetrics(metrics_registry)
    prober = HealthProber(registry, session, timeout_s=0.2, metrics=metrics)
    await registry.register(NodeSpec(id="n1", model="m", endpoint=node_health.endpoint))
    node_health.status = 503
    states = []
    for _ in range(3):
        await prober.probe_all()
        states.append((await registry.list_nodes())[0].healthy)
    assert states == [True, True, False]
    node_health.status = 204
    await prober.probe_all()
    assert (await registry.list_nodes())[0].healthy
    assert metrics_registry.get_sample_value("cic_scheduler_probe_failures_total") == 3


async def test_a_probe_that_times_out_is_a_failure(
    node_health: FakeNodeHealth, session: aiohttp.ClientSession, make_registry: MakeRegistry
) -> None:
    registry = make_registry(breaker_failures=1)
    metrics = SchedulerMetrics(CollectorRegistry())
    prober = HealthProber(registry, session, timeout_s=0.1, metrics=metrics)
    await registry.register(NodeSpec(id="n1", model="m", endpoint=node_health.endpoint))
    node_health.hang = True
    await prober.probe_all()
    assert not (await registry.list_nodes())[0].healthy


async def test_terminated_nodes_are_not_probed(
    node_health: FakeNodeHealth, session: aiohttp.ClientSession, make_registry: MakeRegistry
) -> None:
    registry = make_registry(breaker_failures=1)
    prober = HealthProber(registry, session, 1.0, SchedulerMetrics(CollectorRegistry()))
    spec = NodeSpec(id="n1", model="m", endpoint=node_health.endpoint, state=NodeState.TERMINATED)
    await registry.register(spec)
    await prober.probe_all()
    assert node_health.calls == 0
