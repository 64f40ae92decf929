"""Scaling policies over gRPC, and the autoscaler driving real simulator nodes from the
scheduler's load signal: up after sustained demand, down only through a drain."""

from __future__ import annotations

import math

import aiohttp
import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_orchestrator.autoscaler import Autoscaler
from cic_orchestrator.policies import PolicyStore, ScalingPolicy
from cic_orchestrator.store import NodeStore
from tests.unit.orchestrator.conftest import Orchestrator, eventually, local_launch, now

NOT_LOOKING = {"AUTOSCALE_INTERVAL_S": "3600"}  # the service's own loop stays out of the way


def local_policy(**fields) -> pb.ScalingPolicy:
    values = {
        "model": "cic-sim-small",
        "min_nodes": 1,
        "max_nodes": 3,
        "target_queue_per_node": 4,
        "accelerators": "SIM:1",
        "cloud": "local",
        "vllm_args": ["--ttft-ms", "1"],
        **fields,
    }
    return pb.ScalingPolicy(**values)


async def _set(orchestrator: Orchestrator, policy: pb.ScalingPolicy) -> pb.ScalingPolicy:
    reply = await orchestrator.stub.SetScalingPolicy(pb.SetScalingPolicyRequest(policy=policy))
    return reply.policy


async def test_policies_are_stored_replaced_listed_and_deleted(start_orchestrator) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**NOT_LOOKING)
    stored = await _set(orchestrator, local_policy())
    assert list(stored.vllm_args) == ["--ttft-ms=1"]
    assert await _set(orchestrator, local_policy(max_nodes=5)) == local_policy(
        max_nodes=5, vllm_args=["--ttft-ms=1"]
    )
    await _set(orchestrator, local_policy(model="other", min_nodes=0, max_nodes=1))
    listed = await orchestrator.stub.ListScalingPolicies(pb.ListScalingPoliciesRequest())
    assert [(p.model, p.max_nodes) for p in listed.policies] == [("cic-sim-small", 5), ("other", 1)]
    got = await orchestrator.stub.GetScalingPolicy(pb.GetScalingPolicyRequest(model="other"))
    assert got.policy.max_nodes == 1

    await orchestrator.stub.DeleteScalingPolicy(pb.DeleteScalingPolicyRequest(model="other"))
    for call, request in (
        (orchestrator.stub.GetScalingPolicy, pb.GetScalingPolicyRequest(model="other")),
        (orchestrator.stub.DeleteScalingPolicy, pb.DeleteScalingPolicyRequest(model="other")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "no scaling policy for model other"


BAD_POLICIES = [
    (local_policy(min_nodes=4), "max_nodes must be between min_nodes"),
    (local_policy(min_nodes=-1), "min_nodes must be between 0"),
    (local_policy(min_nodes=0, max_nodes=0), "max_nodes must be at least 1"),
    (local_policy(max_nodes=5000), "max_nodes must be between min_nodes and 1000"),
    (local_policy(target_queue_per_node=0), "target_queue_per_node must be above 0"),
    (local_policy(target_queue_per_node=math.nan), "target_queue_per_node must be a finite"),
    (local_policy(target_queue_per_node=math.inf), "target_queue_per_node must be a finite"),
    (local_policy(target_latency_ms=-1), "target_latency_ms must be between 0 (not used)"),
    (local_policy(target_latency_ms=10**6), "target_latency_ms must be between 0 (not used)"),
    (local_policy(target_latency_ms=math.nan), "target_latency_ms must be a finite"),
    (local_policy(model=""), "model must be"),
    (local_policy(model="a b"), "model must be"),
    (local_policy(cloud="local; id"), "cloud must be"),
    (local_policy(accelerators="SIM"), "accelerators must look like NAME:COUNT"),
    (local_policy(vllm_args=["--port=1"]), "vllm arg --port is not allowed"),
]


async def test_bad_policies_are_invalid_arguments(start_orchestrator) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**NOT_LOOKING)
    for policy, message in BAD_POLICIES:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _set(orchestrator, policy)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in refused.value.details()
    for call, request in (
        (orchestrator.stub.GetScalingPolicy, pb.GetScalingPolicyRequest(model="a b")),
        (orchestrator.stub.DeleteScalingPolicy, pb.DeleteScalingPolicyRequest(model="")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await orchestrator.stub.ListScalingPolicies(pb.ListScalingPoliciesRequest())
    assert list(listed.policies) == []


async def test_a_policy_for_a_cloud_no_provider_serves_is_refused(start_orchestrator) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**NOT_LOOKING)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _set(orchestrator, local_policy(cloud="aws", vllm_args=[]))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no node provider for cloud `aws`" in refused.value.details()


async def _live(orchestrator: Orchestrator) -> list[pb.ManagedNode]:
    states = [pb.NODE_STATE_LAUNCHING, pb.NODE_STATE_READY]
    return list((await orchestrator.stub.ListNodes(pb.ListNodesRequest(states=states))).nodes)


async def _ready(orchestrator: Orchestrator) -> list[pb.ManagedNode]:
    states = [pb.NODE_STATE_READY]
    return list((await orchestrator.stub.ListNodes(pb.ListNodesRequest(states=states))).nodes)


async def test_the_autoscaler_follows_the_queue_with_real_nodes(
    start_orchestrator, scheduler
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(
        AUTOSCALE_INTERVAL_S="0.1", SCALE_UP_AFTER_S="0.3", SCALE_DOWN_AFTER_S="0.3"
    )
    await _set(orchestrator, local_policy())

    async def ready_count(count: int):
        async def check():
            nodes = await _ready(orchestrator)
            registered = all(n.id in scheduler.nodes for n in nodes)
            return nodes if len(nodes) == count and registered else None

        return await eventually(check, f"{count} ready node(s)", timeout=30)

    (first,) = await ready_count(1)  # min_nodes, at once
    scheduler.load[first.id] = (4.0, 6.0)  # 10 queued: 3 nodes at 4 per node
    nodes = await ready_count(3)
    assert (
        orchestrator.metric(
            "cic_orchestrator_scaling_decisions_total",
            model="cic-sim-small",
            direction="up",
            result="launched",
        )
        == 3
    )
    assert orchestrator.metric("cic_orchestrator_desired_nodes", model="cic-sim-small") == 3

    # Demand gone: down to min_nodes, one drain at a time, the busiest node kept.
    busy = nodes[0].id
    scheduler.load.clear()
    scheduler.in_flight[busy] = 2
    (kept,) = await ready_count(1)
    assert kept.id == busy
    for node in nodes[1:]:
        done = await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
        assert done.failure_reason == ""
        assert scheduler.methods_for(node.id)[-2:] == ["DrainNode", "DeregisterNode"]
    assert (
        orchestrator.metric(
            "cic_orchestrator_scaling_decisions_total",
            model="cic-sim-small",
            direction="down",
            result="drained",
        )
        == 2
    )
    assert "DrainNode" not in scheduler.methods_for(busy)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_scale_up_waits_for_sustained_demand_and_down_for_longer(
    start_orchestrator, scheduler
) -> None:
    """With the default delays (30 s up, 300 s down) on a clock the test moves."""
    orchestrator: Orchestrator = await start_orchestrator(**NOT_LOOKING)
    service = orchestrator.service
    await _set(orchestrator, local_policy(min_nodes=1, max_nodes=4, target_queue_per_node=2))
    clock = Clock()
    pool = service._pool
    assert pool is not None and service.lifecycle is not None
    autoscaler = Autoscaler(
        PolicyStore(pool),
        NodeStore(pool),
        service.scheduler,
        service.lifecycle,
        service.metrics,
        interval_s=1,
        scale_up_after_s=service.settings.scale_up_after_s,
        scale_down_after_s=service.settings.scale_down_after_s,
        clock=clock,
    )
    node_id = (await orchestrator.stub.LaunchNode(local_launch())).node.id
    await orchestrator.wait_state(node_id, pb.NODE_STATE_READY)
    await eventually(now(lambda: node_id in scheduler.nodes), "registered")

    async def at(second: float) -> int:
        clock.now = second
        await autoscaler.round()
        return len(await _live(orchestrator))

    scheduler.load[node_id] = (1.0, 4.0)  # 5 queued: 3 nodes at 2 per node
    assert [await at(t) for t in (0, 10, 20)] == [1, 1, 1]
    scheduler.load[node_id] = (1.0, 0.0)  # the spike passes: the wait starts over
    assert await at(21) == 1
    scheduler.load[node_id] = (1.0, 4.0)
    assert [await at(t) for t in (25, 40, 54.9)] == [1, 1, 1]
    assert await at(55) == 3  # 30 s of sustained demand (SkyServe: 300 s)

    scheduler.load[node_id] = (0.0, 0.0)
    assert [await at(t) for t in (100, 250, 399.9)] == [3, 3, 3]
    assert await at(400) == 2  # one node draining after 300 s below target
    assert await at(401) == 2


async def test_below_min_nodes_it_launches_at_once_but_does_not_hammer_failing_launches(
    start_orchestrator, scheduler
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(LOCAL_SIM_COMMAND="false", **NOT_LOOKING)
    service = orchestrator.service
    await _set(orchestrator, local_policy(min_nodes=1, max_nodes=2, vllm_args=[]))
    clock = Clock()
    pool = service._pool
    assert pool is not None and service.lifecycle is not None
    autoscaler = Autoscaler(
        PolicyStore(pool),
        NodeStore(pool),
        service.scheduler,
        service.lifecycle,
        service.metrics,
        interval_s=1,
        scale_up_after_s=30,
        scale_down_after_s=300,
        clock=clock,
    )

    async def launched_at(second: float) -> int:
        clock.now = second
        await autoscaler.round()
        nodes = (await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes
        for node in nodes:
            await orchestrator.wait_state(node.id, pb.NODE_STATE_FAILED)
        return len(nodes)

    assert await launched_at(0) == 1  # at once
    assert [await launched_at(t) for t in (1, 10, 29.9)] == [1, 1, 1]
    assert await launched_at(30) == 2
    failed = (await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes[0]
    assert failed.failure_reason == "process exited with code 1 before /health answered"


async def _request(endpoint: str) -> None:
    """One completion served by the node (its time to first token lands in its /metrics)."""
    body = {"model": "cic-sim-small", "prompt": "hello", "max_tokens": 1}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{endpoint}/v1/completions", json=body) as reply,
    ):
        assert reply.status == 200, await reply.text()


def test_latency_asks_no_more_while_a_node_launches() -> None:
    policy = ScalingPolicy(
        "m", min_nodes=1, max_nodes=5, target_queue_per_node=4, target_latency_ms=100
    )
    assert policy.desired_nodes(0, current=2, latency_ms=300) == 3
    assert policy.desired_nodes(0, current=2, latency_ms=300, launching=True) == 2
    assert policy.desired_nodes(0, current=2, latency_ms=50) == 1  # the queue decides
    assert policy.desired_nodes(0, current=5, latency_ms=300) == 5  # max_nodes


async def test_latency_above_target_scales_up_alone_within_max_and_holds_scale_down(
    start_orchestrator, scheduler
) -> None:
    """Nodes slowed to 300 ms to first token, a 100 ms target, no queue at all: one node more
    after SCALE_UP_AFTER_S of high latency (none while one launches), up to max_nodes; no
    scale-down while latency stays high; with no traffic, the queue decides again."""
    orchestrator: Orchestrator = await start_orchestrator(**NOT_LOOKING)
    service = orchestrator.service
    slow = ["--ttft-ms", "300", "--itl-ms", "1"]
    stored = await _set(
        orchestrator,
        local_policy(min_nodes=1, max_nodes=3, target_latency_ms=100, vllm_args=slow),
    )
    assert stored.target_latency_ms == 100
    clock = Clock()
    pool = service._pool
    assert pool is not None and service.lifecycle is not None
    autoscaler = Autoscaler(
        PolicyStore(pool),
        NodeStore(pool),
        service.scheduler,
        service.lifecycle,
        service.metrics,
        interval_s=1,
        scale_up_after_s=30,
        scale_down_after_s=300,
        clock=clock,
    )
    desired = lambda: orchestrator.metric(  # noqa: E731
        "cic_orchestrator_desired_nodes", model="cic-sim-small"
    )

    async def at(second: float, traffic: bool = True) -> int:
        """Every ready node serves a request, then the autoscaler looks at ``second``."""
        if traffic:
            for node in await _ready(orchestrator):
                await _request(node.endpoint)
        clock.now = second
        await autoscaler.round()
        return len(await _live(orchestrator))

    async def all_ready(count: int) -> None:
        async def check() -> bool:
            nodes = await _ready(orchestrator)
            return len(nodes) == count and all(n.id in scheduler.nodes for n in nodes)

        await eventually(check, f"{count} ready node(s)", timeout=30)

    try:
        assert await at(0, traffic=False) == 1  # min_nodes, at once
        await all_ready(1)
        assert await at(1) == 1  # the first look at the node's /metrics: a baseline
        assert desired() == 1
        assert [await at(t) for t in (2, 20, 31.9)] == [1, 1, 1]  # 300 ms, wanted since 2
        ttft = orchestrator.metric(
            "cic_orchestrator_time_to_first_token_seconds", model="cic-sim-small"
        )
        assert ttft is not None and 0.2 < ttft < 5  # the simulators' 300 ms, above target
        assert desired() == 2
        assert await at(32) == 2  # 30 s of high latency: one node more (the queue is empty)
        # (None more while it launches: test_latency_asks_no_more_while_a_node_launches. Here
        # the launch may end before any round sees it, so the rounds go on once it is over.)
        await all_ready(2)
        assert [await at(t) for t in (70, 99.9)] == [2, 2]  # high again, a new wait from 70
        assert await at(100) == 3
        await all_ready(3)
        assert [await at(t) for t in (102, 140, 200)] == [3, 3, 3]  # max_nodes
        assert desired() == 3
        # High latency holds the nodes although the queue wants min_nodes...
        assert [await at(t) for t in (600, 1000)] == [3, 3]
        # ...no traffic (no latency known): the queue decides, and one drains after 300 s.
        assert [await at(t, traffic=False) for t in (1001, 1300.9)] == [3, 3]
        assert await at(1301, traffic=False) == 2
        assert scheduler.load == {}  # the queue never asked for any of it
    finally:
        await autoscaler.stop()
