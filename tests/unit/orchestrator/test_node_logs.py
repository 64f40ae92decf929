"""A node's log streamed to an operator: its launch and lifecycle and its process's output,
followed until the node is terminated."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_orchestrator.node_logs import NodeLogs
from tests.support.fake_skypilot import FakeSkyPilot
from tests.unit.orchestrator.conftest import (
    Orchestrator,
    eventually,
    local_launch,
    now,
    skypilot_env,
)
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


async def test_a_skypilot_nodes_log_has_its_launch_then_its_runtime_output(
    skypilot: FakeSkyPilot, start_orchestrator, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster's job output (vLLM's own log) is followed with SkyPilot's real
    ``sky.tail_logs`` against the stand-in API server, and lands in the node's log after the
    launch lines; the following ends with the node."""
    caplog.set_level(logging.INFO, logger="cic_orchestrator")
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    launch = pb.LaunchNodeRequest(model="cic-sim-small", accelerators="H100:1", cloud="aws")
    node = (await orchestrator.stub.LaunchNode(launch)).node
    cluster = f"cic-{node.id}"
    lines: list[str] = []

    async def follow() -> None:
        request = pb.StreamNodeLogsRequest(node_id=node.id, follow=True)
        async for line in orchestrator.stub.StreamNodeLogs(request):
            lines.append(line.text)

    following = asyncio.create_task(follow())
    ready = await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    serving = f"node {node.id}: cic-vllm-sim serving cic-sim-small on {ready.endpoint}"
    await eventually(now(lambda: serving in lines), "the simulator's own output in the log")
    assert f"logs {cluster}" in skypilot.calls
    assert lines[0] == f"node {node.id}: launching cic-sim-small on skypilot"
    submitted = next(i for i, x in enumerate(lines) if "sky launch of cluster" in x)
    assert 0 < submitted < lines.index(serving)  # launch lines first, then the runtime's

    # Followed, not read once: what vLLM logs later arrives too (after keep-alives).
    said = 'INFO:     127.0.0.1:50000 - "POST /v1/completions HTTP/1.1" 200 OK'
    skypilot.clusters[cluster].say(said)
    await eventually(now(lambda: f"node {node.id}: {said}" in lines), "a later line")

    await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    await asyncio.wait_for(following, 10)
    assert lines[-1] == f"node {node.id}: terminated"
    provider = orchestrator.service.providers.get("skypilot")
    await eventually(now(lambda: not provider._followers), "the follower thread done")


async def test_a_follower_that_does_not_read_holds_no_more_than_the_kept_lines() -> None:
    """A stalled reader (a client that stopped reading its stream) keeps at most NODE_LOG_LINES
    waiting for it, the newest; memory does not grow with the node's output."""
    logger = logging.getLogger("test.node_logs.stalled")
    logger.setLevel(logging.INFO)
    logs = NodeLogs(max_lines=10)
    logs.attach(logger)

    async def live(rounds: int):
        for _ in range(rounds):
            yield True
        yield False

    try:
        logger.info("node %s: %s", "node-000000000001", "first")
        stream = logs.stream("node-000000000001", follow=True, still_live=live(3))
        assert (await anext(stream)).text == "node node-000000000001: first"
        for n in range(1000):
            logger.info("node %s: line %d", "node-000000000001", n)
        rest = [line.text async for line in stream]
    finally:
        logs.detach(logger)
    assert rest == [f"node node-000000000001: line {n}" for n in range(990, 1000)]
