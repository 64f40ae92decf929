"""LaunchNode with the local provider: a real simulator process, its /health, the scheduler."""

import os
import signal
import socket

import aiohttp
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


async def test_launch_runs_a_simulator_and_registers_it_once_healthy(
    orchestrator: Orchestrator, scheduler
) -> None:
    reply = await orchestrator.stub.LaunchNode(
        local_launch(vllm_args=["--ttft-ms", "1", "--itl-ms=1"])
    )
    assert reply.node.state == pb.NODE_STATE_LAUNCHING
    assert reply.node.id.startswith("node-") and len(reply.node.id) == 17
    assert list(reply.node.vllm_args) == ["--ttft-ms=1", "--itl-ms=1"]

    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    assert (node.provider, node.cloud, node.accelerators) == ("local", "local", "SIM:1")
    assert node.endpoint.startswith("http://127.0.0.1:")
    handle = await orchestrator.handle(node.id)
    assert process_runs(handle)
    assert node.endpoint.endswith(f":{handle['port']}")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{node.endpoint}/health") as health:
            assert health.status == 200
        async with session.get(f"{node.endpoint}/v1/models") as models:
            assert [m["id"] for m in (await models.json())["data"]] == ["cic-sim-small"]

    registered = await eventually(_registered(scheduler, node.id), "registration")
    assert (registered.endpoint, registered.model) == (node.endpoint, "cic-sim-small")
    assert dict(registered.labels) == {
        "provider": "local",
        "cloud": "local",
        "accelerators": "SIM:1",
        "accelerator": "SIM",
    }
    await eventually(now(lambda: scheduler.count("Heartbeat", node.id) >= 2), "heartbeats")

    listed = await orchestrator.stub.ListNodes(pb.ListNodesRequest(states=[pb.NODE_STATE_READY]))
    assert [n.id for n in listed.nodes] == [node.id]
    none = await orchestrator.stub.ListNodes(pb.ListNodesRequest(states=[pb.NODE_STATE_FAILED]))
    assert list(none.nodes) == []
    assert orchestrator.launches("local", "ready") == 1
    assert orchestrator.metric("cic_orchestrator_nodes", state="ready", provider="local") == 1
    assert (
        orchestrator.metric("cic_orchestrator_launch_duration_seconds_count", provider="local") == 1
    )


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (local_launch(model="bad model"), grpc.StatusCode.INVALID_ARGUMENT, "model must be"),
        (local_launch(model="$(id)"), grpc.StatusCode.INVALID_ARGUMENT, "model must be"),
        (
            pb.LaunchNodeRequest(model="m", accelerators="H100", cloud="local"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "accelerators must look like NAME:COUNT",
        ),
        (
            local_launch(vllm_args=["--port=9"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "vllm arg --port is not allowed",
        ),
        (
            local_launch(vllm_args=["--ttft-ms", "5;reboot"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "vllm arg --ttft-ms needs a number",
        ),
        (
            pb.LaunchNodeRequest(model="m", accelerators="H100:1", cloud="aws"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no node provider for cloud `aws` is enabled",
        ),
        (
            pb.LaunchNodeRequest(model="m", accelerators="H100:1"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no node provider for cloud `` is enabled",
        ),
    ],
)
async def test_launch_refuses_bad_input(
    orchestrator: Orchestrator, request_: pb.LaunchNodeRequest, code, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orchestrator.stub.LaunchNode(request_)
    assert refused.value.code() == code
    assert message in refused.value.details()
    assert list((await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes) == []


async def test_local_cloud_is_refused_when_the_provider_is_disabled(start_orchestrator) -> None:
    orchestrator = await start_orchestrator(NODE_PROVIDERS="")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orchestrator.stub.LaunchNode(local_launch())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no node provider for cloud `local` is enabled" in refused.value.details()


async def test_launch_timeout_fails_the_node_and_ends_its_process(
    start_orchestrator, scheduler
) -> None:
    orchestrator = await start_orchestrator(LOCAL_SIM_COMMAND=NEVER_SERVES, LAUNCH_TIMEOUT_S="1")
    reply = await orchestrator.stub.LaunchNode(local_launch())
    handle = await eventually(lambda: orchestrator.handle(reply.node.id), "process started")
    assert process_runs(handle)
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == "/health did not answer within 1s"
    assert not process_runs(handle)
    assert scheduler.methods_for(node.id) == []
    await eventually(now(lambda: orchestrator.launches("local", "timeout") == 1), "counted")


async def test_a_command_that_cannot_start_fails_the_node(start_orchestrator) -> None:
    orchestrator = await start_orchestrator(LOCAL_SIM_COMMAND="no-such-simulator-here")
    reply = await orchestrator.stub.LaunchNode(local_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason.startswith("cannot start no-such-simulator-here:")


async def test_a_simulator_that_exits_while_launching_fails_the_node(start_orchestrator) -> None:
    orchestrator = await start_orchestrator(LOCAL_SIM_COMMAND="false")
    reply = await orchestrator.stub.LaunchNode(local_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == "process exited with code 1 before /health answered"


async def test_process_death_fails_a_ready_node(orchestrator: Orchestrator, scheduler) -> None:
    reply = await orchestrator.stub.LaunchNode(local_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(_registered(scheduler, node.id), "registration")
    handle = await orchestrator.handle(node.id)
    os.kill(handle["pid"], signal.SIGKILL)
    node = await orchestrator.wait_state(node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == "process killed by signal SIGKILL"
    assert scheduler.methods_for(node.id)[-1] == "DeregisterNode"
    assert node.id not in scheduler.nodes


async def test_heartbeat_registers_a_node_the_scheduler_forgot(
    orchestrator: Orchestrator, scheduler
) -> None:
    reply = await orchestrator.stub.LaunchNode(local_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(_registered(scheduler, node.id), "registration")
    scheduler.forget(node.id)
    again = await eventually(_registered(scheduler, node.id), "registration again")
    assert again.endpoint == node.endpoint
    assert scheduler.count("RegisterNode", node.id) == 2
    assert (await orchestrator.node(node.id)).state == pb.NODE_STATE_READY


async def test_a_node_becomes_ready_while_the_scheduler_is_unreachable(
    start_orchestrator, caplog
) -> None:
    # The scheduler's address is a port held bound but never listening: every connection is
    # refused at once, and no server another test starts meanwhile can take the port (a
    # stopped scheduler's freed port could be, and then answered the heartbeats).
    with socket.socket() as unreachable:
        unreachable.bind(("127.0.0.1", 0))
        port = unreachable.getsockname()[1]
        orchestrator = await start_orchestrator(SCHEDULER_ADDR=f"127.0.0.1:{port}")
        reply = await orchestrator.stub.LaunchNode(local_launch())
        node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
        assert process_runs(await orchestrator.handle(node.id))

        def skipped_rounds() -> int:
            return sum("heartbeats skipped" in r.getMessage() for r in caplog.records)

        await eventually(now(lambda: skipped_rounds() >= 2), "heartbeat rounds go on")
        assert (await orchestrator.node(node.id)).state == pb.NODE_STATE_READY


def _registered(scheduler, node_id: str):
    return now(lambda: scheduler.nodes.get(node_id))
