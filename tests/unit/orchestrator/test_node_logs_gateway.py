"""A SkyPilot node's log followed by an admin through the real gateway
(``GET /admin/nodes/{id}/logs?follow=true``, NDJSON) from the real orchestrator's
``StreamNodeLogs``: its launch lines, then its runtime output as SkyPilot's ``tail_logs``
streams it from the stand-in API server, while the node launches."""

from __future__ import annotations

import asyncio
import importlib
import logging

import orjson
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from tests.support.fake_skypilot import FakeSkyPilot
from tests.support.net import free_port
from tests.unit.gateway.conftest import node, services, start_gateway  # noqa: F401 - fixtures
from tests.unit.orchestrator.conftest import skypilot_env


async def test_an_admin_follows_a_skypilot_nodes_launch_and_runtime_through_the_gateway(
    skypilot: FakeSkyPilot,
    start_orchestrator,
    start_gateway,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cic_orchestrator")
    # The orchestrator checks a SkyPilot launch before answering it, and its first check in a
    # process imports SkyPilot (seconds): done here first, as earlier tests in a run have done,
    # so that the launch answers within the gateway's GRPC_TIMEOUT_S when run alone too.
    await asyncio.to_thread(importlib.import_module, "sky")
    port = free_port()
    orchestrator = await start_orchestrator(GRPC_PORT=str(port), **skypilot_env(skypilot))
    gateway = await start_gateway(ORCHESTRATOR_ADDR=f"127.0.0.1:{port}")
    launch = {"model": "cic-sim-small", "accelerators": "H100:1", "cloud": "aws"}
    status, launched = await gateway.admin("POST", "/admin/nodes/launch", launch)
    assert status == 202, launched
    node_id = launched["id"]
    url = f"{gateway.url}/admin/nodes/{node_id}/logs?follow=true"
    texts: list[str] = []
    async with gateway.session.get(url, headers=gateway.admin_headers()) as resp:
        assert (resp.status, resp.content_type) == (200, "application/x-ndjson")
        async for raw in resp.content:  # as the lines come, while the node launches
            texts.append(orjson.loads(raw)["text"])
            if "cic-vllm-sim serving cic-sim-small on http://127.0.0.1:" in texts[-1]:
                break
    assert texts[0] == f"node {node_id}: launching cic-sim-small on skypilot"
    assert any("sky launch of cluster" in text for text in texts[:-1])
    await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node_id))
    await orchestrator.wait_state(node_id, pb.NODE_STATE_TERMINATED)
