"""The orchestrator tells the event bus (``{prefix}events`` in Redis) when a node fails and
when one is preempted, for the operator's notification channels (billing's notifier)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_common.events_bus import FIELD
from tests.unit.orchestrator.conftest import eventually, local_launch, now
from tests.unit.orchestrator.test_agents import FAST, node_token


async def _events(redis_url: str, prefix: str, kind: str, count: int) -> list[dict[str, Any]]:
    """The bus's events of ``kind`` once there are ``count`` of them (AssertionError at 20 s)."""
    client = Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    try:
        while True:
            entries = await client.xrange(f"{prefix}events")
            found = [orjson.loads(f[FIELD]) for _, f in entries]
            found = [e for e in found if e["kind"] == kind]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {kind} event on the bus"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_failed_node_and_a_preempted_one_are_published(
    start_orchestrator, redis_url: str, redis_prefix: str
) -> None:
    orchestrator = await start_orchestrator(
        REDIS_URL=redis_url, REDIS_KEY_PREFIX=redis_prefix, REPLACE_LOST_NODES="false"
    )
    lost = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    notified = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
    await orchestrator.wait_state(lost.id, pb.NODE_STATE_READY)
    await orchestrator.wait_state(notified.id, pb.NODE_STATE_READY)

    os.kill((await orchestrator.handle(lost.id))["pid"], signal.SIGKILL)
    failed = await orchestrator.wait_state(lost.id, pb.NODE_STATE_FAILED)
    [event] = await _events(redis_url, redis_prefix, "node.failed", 1)
    assert event["tenant_id"] is None  # the operator's alone
    data = event["data"]
    assert (data["node_id"], data["model"], data["provider"]) == (lost.id, lost.model, "local")
    assert (data["reason"], data["previous_state"]) == (failed.failure_reason, "ready")

    await orchestrator.stub.AgentPreempted(
        pb.AgentPreemptedRequest(
            node_id=notified.id,
            token=await node_token(orchestrator, notified.id),
            cloud="gcp",
            notice="maintenance",
        )
    )
    [preempted] = await _events(redis_url, redis_prefix, "node.preempted", 1)
    assert preempted["data"]["node_id"] == notified.id
    assert preempted["data"]["notice"] == "gcp: maintenance"
    assert (
        orchestrator.metric("cic_events_published_total", kind="node.failed", result="published")
        == 1
    )


async def test_a_failed_node_leaves_the_scheduler_before_the_event_bus_is_told(
    start_orchestrator, scheduler
) -> None:
    """A Redis that does not answer holds the node.failed event for its publish timeout; the
    failed node is out of the scheduler's rotation first, not a second later."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        orchestrator = await start_orchestrator(
            REDIS_URL=f"redis://127.0.0.1:{port}/0", REPLACE_LOST_NODES="false"
        )
        lost = (await orchestrator.stub.LaunchNode(local_launch(vllm_args=FAST))).node
        await orchestrator.wait_state(lost.id, pb.NODE_STATE_READY)
        os.kill((await orchestrator.handle(lost.id))["pid"], signal.SIGKILL)
        await eventually(
            now(lambda: "DeregisterNode" in scheduler.methods_for(lost.id)), "deregistered"
        )
        unpublished = orchestrator.metric(
            "cic_events_published_total", kind="node.failed", result="failed"
        )
        assert not unpublished  # the publish is still waiting for Redis
        await orchestrator.wait_state(lost.id, pb.NODE_STATE_FAILED)
    finally:
        silent.close()
