"""The node agent's RPCs on a real orchestrator with the local provider: the per-node token
(handed to the node's process as the SkyPilot task would hand it), a preemption notice that
drains the node at once and launches a replacement, a lost node replaced, a refused spot
launch launched again on-demand."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import psutil
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2
from tests.unit.orchestrator.conftest import Orchestrator, eventually, local_launch

FAST = ["--ttft-ms=1", "--itl-ms=1"]


async def node_token(orchestrator: Orchestrator, node_id: str) -> str:
    """The token as the node's own process has it (its environment)."""
    handle = await orchestrator.handle(node_id)
    env = psutil.Process(handle["pid"]).environ()
    assert env["CIC_NODE_ID"] == node_id
    return env["CIC_NODE_TOKEN"]


async def replacement_of(orchestrator: Orchestrator, node_id: str) -> pb.ManagedNode:
    async def found() -> pb.ManagedNode | None:
        nodes = (await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes
        return next((n for n in nodes if n.replaces == node_id), None)

    return await eventually(found, f"a replacement of {node_id}")


async def test_the_agent_authenticates_with_its_own_token_and_a_notice_drains_and_replaces(
    orchestrator: Orchestrator, scheduler
) -> None:
    launched = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    other = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    node = await orchestrator.wait_state(launched.id, pb.NODE_STATE_READY)
    await orchestrator.wait_state(other.id, pb.NODE_STATE_READY)
    token = await node_token(orchestrator, node.id)
    assert token.startswith("cic-node-") and token != await node_token(orchestrator, other.id)
    assert not node.HasField("agent_seen_at")

    # Another node's token, a made-up one, and none are refused alike.
    for wrong in (await node_token(orchestrator, other.id), "cic-node-" + "x" * 43, ""):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.stub.AgentHeartbeat(
                pb.AgentHeartbeatRequest(node_id=node.id, token=wrong, vllm_healthy=True)
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == "the node token is not valid for this node"
    # The database holds a digest, never the token.
    conn_token = await _stored_digest(orchestrator, node.id)
    assert token not in conn_token and len(conn_token) == 64

    reply = await orchestrator.stub.AgentRegister(
        pb.AgentRegisterRequest(node_id=node.id, token=token, agent_version="0.1.0")
    )
    assert reply.state == pb.NODE_STATE_READY
    assert (await orchestrator.node(node.id)).HasField("agent_seen_at")

    scheduler.in_flight[node.id] = 1  # a stream still runs on it
    preempted = await orchestrator.stub.AgentPreempted(
        pb.AgentPreemptedRequest(node_id=node.id, token=token, cloud="aws", notice="terminate")
    )
    assert preempted.state == pb.NODE_STATE_DRAINING
    # No new traffic at once; the node waits for its stream.
    assert scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_DRAINING
    draining = await orchestrator.node(node.id)
    assert draining.state == pb.NODE_STATE_DRAINING
    assert draining.preemption == "aws: terminate"

    replacement = await replacement_of(orchestrator, node.id)
    assert (replacement.model, replacement.cloud, replacement.use_spot) == (
        node.model,
        node.cloud,
        node.use_spot,
    )
    assert list(replacement.vllm_args) == list(node.vllm_args)
    await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)

    scheduler.in_flight[node.id] = 0
    await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    # A repeated notice for a node gone is refused; the other node never moved.
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await orchestrator.stub.AgentPreempted(
            pb.AgentPreemptedRequest(node_id=node.id, token=token, cloud="aws")
        )
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await orchestrator.node(other.id)).state == pb.NODE_STATE_READY
    nodes = (await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes
    assert len(nodes) == 3  # one replacement only


async def test_a_preempted_nodes_drain_ends_when_the_machine_goes(
    orchestrator: Orchestrator, scheduler
) -> None:
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    scheduler.in_flight[node.id] = 1  # never finishes; DRAIN_TIMEOUT_S is 20 s here
    request = pb.AgentPreemptedRequest(
        node_id=node.id, token=await node_token(orchestrator, node.id), cloud="azure"
    )
    request.not_after.FromDatetime(datetime.now(UTC) + timedelta(seconds=0.5))
    await orchestrator.stub.AgentPreempted(request)
    started = time.monotonic()
    ended = await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED, timeout=5)
    assert time.monotonic() - started < 5
    assert ended.preemption.startswith("azure: preempted (machine gone at ")


async def test_bad_notices_are_refused(orchestrator: Orchestrator) -> None:
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    token = await node_token(orchestrator, node.id)
    for request, message in [
        (pb.AgentPreemptedRequest(node_id=node.id, token=token, cloud="ibm"), "cloud must be"),
        (
            pb.AgentPreemptedRequest(node_id=node.id, token=token, cloud="gcp", notice="a\nb"),
            "notice must be printable",
        ),
        (pb.AgentPreemptedRequest(node_id="nope", token=token, cloud="gcp"), "node_id must"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.stub.AgentPreempted(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
    assert (await orchestrator.node(node.id)).state == pb.NODE_STATE_READY


async def test_a_lost_node_is_replaced_and_capacity_returns(orchestrator: Orchestrator) -> None:
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    os.kill((await orchestrator.handle(node.id))["pid"], signal.SIGKILL)

    failed = await orchestrator.wait_state(node.id, pb.NODE_STATE_FAILED)
    assert "killed by signal SIGKILL" in failed.failure_reason
    replacement = await replacement_of(orchestrator, node.id)
    await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)


async def test_a_refused_spot_launch_is_launched_again_on_demand(start_orchestrator) -> None:
    orchestrator = await start_orchestrator(LOCAL_SPOT_AVAILABLE="false")
    spot = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST, use_spot=True))).node
    failed = await orchestrator.wait_state(spot.id, pb.NODE_STATE_FAILED)
    assert "spot capacity unavailable" in failed.failure_reason
    on_demand = await replacement_of(orchestrator, spot.id)
    assert not on_demand.use_spot
    await orchestrator.wait_state(on_demand.id, pb.NODE_STATE_READY)
    nodes = (await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes
    assert len(nodes) == 2


async def _stored_digest(orchestrator: Orchestrator, node_id: str) -> str:
    conn = await asyncpg.connect(orchestrator.database_url)
    try:
        return await conn.fetchval(
            "SELECT agent_token_sha256 FROM orchestrator.nodes WHERE id = $1", node_id
        )
    finally:
        await conn.close()
