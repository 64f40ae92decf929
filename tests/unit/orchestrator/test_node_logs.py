"""A node's log streamed to an operator: its launch and lifecycle and its process's output,
followed until the node is terminated."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from tests.unit.orchestrator.conftest import Orchestrator, eventually, local_launch, now
from tests.unit.orchestrator.test_agents import FAST


async def test_a_nodes_log_is_followed_from_launch_to_termination(
    orchestrator: Orchestrator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cic_orchestrator")  # LOG_LEVEL=INFO, the default
    node = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    lines: list[str] = []

    async def follow() -> None:
        request = pb.StreamNodeLogsRequest(node_id=node.id, follow=True)
        async for line in orchestrator.stub.StreamNodeLogs(request):
            assert line.at.seconds > 0
            lines.append(line.text)

    following = asyncio.create_task(follow())
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: any("ready at" in line for line in lines)), "ready in the log")
    assert lines[0] == f"node {node.id}: launching cic-sim-small on local"
    assert any("started" in line for line in lines)
    assert all(line.startswith(f"node {node.id}: ") for line in lines)

    await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    await asyncio.wait_for(following, 10)  # the stream ends with the node
    assert lines[-1] in (f"node {node.id}: terminated", f"node {node.id}: process ended")
    assert any(line == f"node {node.id}: terminated" for line in lines)

    # Afterwards the kept lines can still be read; an unknown node is NOT_FOUND.
    request = pb.StreamNodeLogsRequest(node_id=node.id)
    kept = [line.text async for line in orchestrator.stub.StreamNodeLogs(request)]
    assert kept == lines
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        async for _ in orchestrator.stub.StreamNodeLogs(
            pb.StreamNodeLogsRequest(node_id="node-000000000000")
        ):
            pass
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
