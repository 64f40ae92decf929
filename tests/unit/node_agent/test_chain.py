"""The whole chain with real parts: the node agent (in-process) on a node the real orchestrator
launched (local provider), calling the real gateway's node API with the token the orchestrator
gave the node; a GCP preemption notice from the metadata fake drains the node at once, a
replacement takes its place, and the agent stops once the node is gone."""

from __future__ import annotations

import asyncio

import aiohttp
import psutil

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2
from cic_node_agent.agent import NodeAgent
from cic_node_agent.config import load_settings
from tests.support.fake_cloud_metadata import FakeCloudMetadata
from tests.support.net import free_port
from tests.unit.gateway.conftest import node, services, start_gateway  # noqa: F401 - fixtures
from tests.unit.orchestrator.conftest import (  # noqa: F401 - fixtures
    scheduler,
    start_orchestrator,
)
from tests.unit.orchestrator.test_agents import replacement_of


async def test_a_preempted_node_reported_through_the_gateway_is_drained_and_replaced(
    start_orchestrator,  # noqa: F811
    start_gateway,  # noqa: F811
    scheduler,  # noqa: F811
) -> None:
    port = free_port()
    orchestrator = await start_orchestrator(GRPC_PORT=str(port))
    gateway = await start_gateway(ORCHESTRATOR_ADDR=f"127.0.0.1:{port}")
    launch = {
        "model": "cic-sim-small",
        "accelerators": "SIM:1",
        "cloud": "local",
        "vllm_args": ["--ttft-ms=1", "--itl-ms=1"],
    }
    status, launched = await gateway.admin("POST", "/admin/nodes/launch", launch)
    assert status == 202, launched
    node_ = await orchestrator.wait_state(launched["id"], pb.NODE_STATE_READY)
    env = psutil.Process((await orchestrator.handle(node_.id))["pid"]).environ()

    metadata = FakeCloudMetadata("gcp")
    await metadata.start()
    settings = load_settings(
        {
            "CIC_NODE_ID": env["CIC_NODE_ID"],
            "CIC_NODE_TOKEN": env["CIC_NODE_TOKEN"],
            "CIC_CONTROL_PLANE_URL": gateway.url,
            "CIC_VLLM_URL": node_.endpoint,
            "CIC_AWS_METADATA_URL": metadata.url,
            "CIC_GCP_METADATA_URL": metadata.url,
            "CIC_AZURE_METADATA_URL": metadata.url,
            "CIC_HEARTBEAT_INTERVAL_S": "0.05",
            "CIC_NOTICE_POLL_INTERVAL_S": "0.05",
        }
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            agent = NodeAgent(settings, session)
            running = asyncio.create_task(agent.run(asyncio.Event()))
            await asyncio.wait_for(agent.registered.wait(), 10)
            assert (await orchestrator.node(node_.id)).HasField("agent_seen_at")

            metadata.preempt(seconds_ahead=30)
            draining = await orchestrator.wait_state(node_.id, pb.NODE_STATE_DRAINING)
            assert draining.preemption == "gcp: preempted"
            assert scheduler.nodes[node_.id].state == scheduler_pb2.NODE_STATE_DRAINING
            replacement = await replacement_of(orchestrator, node_.id)
            await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)
            await orchestrator.wait_state(node_.id, pb.NODE_STATE_TERMINATED)
            await asyncio.wait_for(running, 10)  # the node is gone: the agent stops
    finally:
        await metadata.stop()
    assert agent.notice is not None and agent.notice.cloud == "gcp"
