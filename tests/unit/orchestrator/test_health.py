"""Three-signal health on a real orchestrator with the local provider: a node whose /health
stops answering (its process stopped, the machine still there) is suspect and out of the
scheduler's rotation, healthy and back in it when it answers again, degraded while its agent
is silent, and dead — failed and replaced — when nothing answers for NODE_DEAD_AFTER_S."""

from __future__ import annotations

import asyncio
import os
import signal

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2
from tests.unit.orchestrator.conftest import Orchestrator, eventually, local_launch, now
from tests.unit.orchestrator.test_agents import FAST, node_token, replacement_of

HEALTH_ENV = {
    "HEALTH_PROBE_TIMEOUT_S": "0.2",
    "AGENT_SILENT_AFTER_S": "0.5",
    "NODE_DEAD_AFTER_S": "1.5",
}


async def health_of(orchestrator: Orchestrator, node_id: str, health: int) -> pb.ManagedNode:
    async def reached() -> pb.ManagedNode | None:
        node = await orchestrator.node(node_id)
        return node if node.health == health else None

    return await eventually(reached, f"{node_id} {pb.NodeHealth.Name(health)}")


async def test_health_follows_the_three_signals_and_only_healthy_nodes_take_traffic(
    start_orchestrator, scheduler
) -> None:
    orchestrator = await start_orchestrator(**HEALTH_ENV)
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    await health_of(orchestrator, node.id, pb.NODE_HEALTH_HEALTHY)
    pid = (await orchestrator.handle(node.id))["pid"]

    # /health stops answering, the process (the machine) is still there: suspect, no traffic.
    os.kill(pid, signal.SIGSTOP)
    try:
        await health_of(orchestrator, node.id, pb.NODE_HEALTH_SUSPECT)
        await eventually(  # the drain follows the health it was decided on
            now(lambda: scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_DRAINING),
            "out of the scheduler's rotation",
        )
        await eventually(  # the gauges are set once the round has judged every node
            now(lambda: orchestrator.metric("cic_orchestrator_node_health", health="suspect") == 1),
            "the suspect node counted",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    # It answers again within NODE_DEAD_AFTER_S: healthy and back in rotation.
    await health_of(orchestrator, node.id, pb.NODE_HEALTH_HEALTHY)
    await eventually(
        now(lambda: scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_READY),
        "back in the scheduler's rotation",
    )
    assert (await orchestrator.node(node.id)).state == pb.NODE_STATE_READY

    # Its agent reported once, then fell silent: degraded (serving, but a signal is missing).
    token = await node_token(orchestrator, node.id)
    await orchestrator.stub.AgentRegister(pb.AgentRegisterRequest(node_id=node.id, token=token))
    await health_of(orchestrator, node.id, pb.NODE_HEALTH_DEGRADED)
    await eventually(
        now(lambda: scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_DRAINING),
        "out of the scheduler's rotation",
    )
    await orchestrator.stub.AgentHeartbeat(
        pb.AgentHeartbeatRequest(node_id=node.id, token=token, vllm_healthy=True)
    )
    await health_of(orchestrator, node.id, pb.NODE_HEALTH_HEALTHY)

    # Nothing answers for NODE_DEAD_AFTER_S (agent silent too): dead, failed, replaced.
    os.kill(pid, signal.SIGSTOP)
    try:
        failed = await orchestrator.wait_state(node.id, pb.NODE_STATE_FAILED)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert failed.health == pb.NODE_HEALTH_DEAD
    assert failed.failure_reason == "/health and agent silent"
    replacement = await replacement_of(orchestrator, node.id)
    await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)
    await health_of(orchestrator, replacement.id, pb.NODE_HEALTH_HEALTHY)


async def test_an_agent_that_reports_vllm_failing_takes_the_node_out_of_traffic(
    start_orchestrator, scheduler
) -> None:
    """The agent's own view of vLLM is the third signal: while the control plane's probe
    answers, an agent that says vLLM's /health fails makes the node degraded (no traffic); with
    the probe failing too, the node is dead after NODE_DEAD_AFTER_S although its agent talks."""
    orchestrator = await start_orchestrator(**HEALTH_ENV)
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    token = await node_token(orchestrator, node.id)
    await orchestrator.stub.AgentRegister(pb.AgentRegisterRequest(node_id=node.id, token=token))
    vllm_healthy = False
    beating = True

    async def beat() -> None:  # the agent heart-beats for as long as the test wants
        while beating:
            await orchestrator.stub.AgentHeartbeat(
                pb.AgentHeartbeatRequest(node_id=node.id, token=token, vllm_healthy=vllm_healthy)
            )
            await asyncio.sleep(0.05)

    agent = asyncio.create_task(beat())
    try:
        await health_of(orchestrator, node.id, pb.NODE_HEALTH_DEGRADED)
        await eventually(
            now(lambda: scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_DRAINING),
            "out of the scheduler's rotation",
        )
        vllm_healthy = True
        await health_of(orchestrator, node.id, pb.NODE_HEALTH_HEALTHY)
        await eventually(
            now(lambda: scheduler.nodes[node.id].state == scheduler_pb2.NODE_STATE_READY),
            "back in the scheduler's rotation",
        )

        # vLLM stops answering anyone; the agent says so: dead, failed and replaced.
        vllm_healthy = False
        pid = (await orchestrator.handle(node.id))["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            failed = await orchestrator.wait_state(node.id, pb.NODE_STATE_FAILED)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        beating = False
        await asyncio.gather(agent, return_exceptions=True)
    assert failed.health == pb.NODE_HEALTH_DEAD
    assert failed.failure_reason == "/health failing; the agent last reported vLLM failing too"
    replacement = await replacement_of(orchestrator, node.id)
    await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)
