"""TerminateNode: drain at the scheduler, wait for in-flight requests, end, deregister."""

import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from tests.unit.orchestrator.conftest import (
    NEVER_SERVES,
    Orchestrator,
    eventually,
    local_launch,
    now,
    process_runs,
)


async def _ready_node(orchestrator: Orchestrator, scheduler) -> pb.ManagedNode:
    reply = await orchestrator.stub.LaunchNode(local_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: node.id in scheduler.nodes), "registration")
    return node


async def test_terminate_drains_then_ends_the_process(
    orchestrator: Orchestrator, scheduler
) -> None:
    node = await _ready_node(orchestrator, scheduler)
    handle = await orchestrator.handle(node.id)
    scheduler.in_flight[node.id] = 1

    reply = await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    assert reply.node.state == pb.NODE_STATE_DRAINING

    def drained_and_polled_twice() -> bool:
        return scheduler.count("DrainNode", node.id) == 1 and scheduler.count("ListNodes", "") >= 2

    await eventually(now(drained_and_polled_twice), "DrainNode, then in-flight polls")
    assert scheduler.nodes[node.id].state == pb.NODE_STATE_DRAINING
    again = await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    assert again.node.state == pb.NODE_STATE_DRAINING
    assert process_runs(handle)
    assert (await orchestrator.node(node.id)).state == pb.NODE_STATE_DRAINING

    scheduler.in_flight[node.id] = 0
    done = await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    assert done.failure_reason == ""
    assert not process_runs(handle)
    assert scheduler.methods_for(node.id)[-2:] == ["DrainNode", "DeregisterNode"]
    assert node.id not in scheduler.nodes

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"node {node.id} is already terminated" in refused.value.details()


async def test_drain_timeout_terminates_anyway(start_orchestrator, scheduler) -> None:
    orchestrator = await start_orchestrator(DRAIN_TIMEOUT_S="0.3")
    node = await _ready_node(orchestrator, scheduler)
    scheduler.in_flight[node.id] = 3
    await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    assert not process_runs(await orchestrator.handle(node.id))


async def test_terminate_while_launching_ends_the_process_without_draining(
    start_orchestrator, scheduler
) -> None:
    orchestrator = await start_orchestrator(LOCAL_SIM_COMMAND=NEVER_SERVES)
    reply = await orchestrator.stub.LaunchNode(local_launch())
    handle = await eventually(lambda: orchestrator.handle(reply.node.id), "process started")
    terminating = await orchestrator.stub.TerminateNode(
        pb.TerminateNodeRequest(node_id=reply.node.id)
    )
    assert terminating.node.state == pb.NODE_STATE_DRAINING
    await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_TERMINATED)
    assert not process_runs(handle)
    assert "DrainNode" not in scheduler.methods_for(reply.node.id)


async def test_unknown_node_ids(orchestrator: Orchestrator) -> None:
    for call, request in [
        (orchestrator.stub.TerminateNode, pb.TerminateNodeRequest(node_id="node-000000000000")),
        (orchestrator.stub.GetNode, pb.GetNodeRequest(node_id="node-000000000000")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "no node node-000000000000"


@pytest.mark.parametrize("node_id", ["", "node-", "node-XYZ", "x" * 500, "node-000000000000\n"])
async def test_malformed_node_ids_are_invalid_arguments(
    orchestrator: Orchestrator, node_id: str
) -> None:
    for call, request in [
        (orchestrator.stub.TerminateNode, pb.TerminateNodeRequest(node_id=node_id)),
        (orchestrator.stub.GetNode, pb.GetNodeRequest(node_id=node_id)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "node_id must look like node-0123456789ab"
