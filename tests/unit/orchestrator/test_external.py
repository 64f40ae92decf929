"""RegisterNode: adopting a server that already runs, and retiring it without stopping it."""

import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from tests.support.net import free_port
from tests.unit.orchestrator.conftest import Orchestrator, answers, eventually, now


async def test_register_adopts_then_terminate_leaves_it_running(
    orchestrator: Orchestrator, scheduler, running_server: str
) -> None:
    reply = await orchestrator.stub.RegisterNode(
        pb.RegisterNodeRequest(endpoint=running_server + "/", model="cic-sim-small")
    )
    node = reply.node
    assert node.state == pb.NODE_STATE_LAUNCHING
    assert (node.provider, node.endpoint, node.model) == (
        "external",
        running_server,
        "cic-sim-small",
    )
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: node.id in scheduler.nodes), "registration")
    assert scheduler.nodes[node.id].endpoint == running_server
    assert scheduler.nodes[node.id].labels["provider"] == "external"
    assert "region" not in scheduler.nodes[node.id].labels

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await orchestrator.stub.RegisterNode(
            pb.RegisterNodeRequest(endpoint=running_server, model="cic-sim-small")
        )
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS

    reply = await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    assert reply.node.state == pb.NODE_STATE_DRAINING
    await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    assert scheduler.methods_for(node.id)[-2:] == ["DrainNode", "DeregisterNode"]
    assert node.id not in scheduler.nodes
    assert await answers(running_server)


async def test_register_of_a_server_that_never_answers_fails(start_orchestrator, scheduler) -> None:
    orchestrator = await start_orchestrator(LAUNCH_TIMEOUT_S="0.5")
    endpoint = f"http://127.0.0.1:{free_port()}"
    reply = await orchestrator.stub.RegisterNode(
        pb.RegisterNodeRequest(endpoint=endpoint, model="m")
    )
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == "/health did not answer within 0.5s"
    assert scheduler.methods_for(node.id) == []
    await eventually(now(lambda: orchestrator.launches("external", "timeout") == 1), "counted")


async def test_a_registered_server_carries_the_region_it_was_given(
    orchestrator: Orchestrator, scheduler, running_server: str
) -> None:
    reply = await orchestrator.stub.RegisterNode(
        pb.RegisterNodeRequest(endpoint=running_server, model="cic-sim-small", region="eu-west")
    )
    await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: reply.node.id in scheduler.nodes), "registration")
    assert scheduler.nodes[reply.node.id].labels["region"] == "eu-west"


async def test_local_nodes_carry_the_local_sim_region(start_orchestrator, scheduler) -> None:
    orchestrator = await start_orchestrator(LOCAL_SIM_REGION="us-east")
    reply = await orchestrator.stub.LaunchNode(
        pb.LaunchNodeRequest(model="cic-sim-small", accelerators="SIM:1", cloud="local")
    )
    await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: reply.node.id in scheduler.nodes), "registration")
    labels = scheduler.nodes[reply.node.id].labels
    assert (labels["cloud"], labels["region"], labels["accelerator"]) == ("local", "us-east", "SIM")


@pytest.mark.parametrize(
    ("endpoint", "model", "message", "region"),
    [
        ("10.0.0.5:8000", "m", "endpoint must be", ""),
        ("http://10.0.0.5:8000/v1", "m", "endpoint must be", ""),
        ("http://10.0.0.5:8000", "", "model must be", ""),
        ("http://10.0.0.5:8000", "m", "region must be", "eu west"),
    ],
)
async def test_register_refuses_bad_input(
    orchestrator: Orchestrator, endpoint: str, model: str, message: str, region: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orchestrator.stub.RegisterNode(
            pb.RegisterNodeRequest(endpoint=endpoint, model=model, region=region)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
