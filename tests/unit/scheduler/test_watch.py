"""``WatchNodes``: a snapshot, then every change of a node, made through any scheduler replica
(here also through a second scheduler process)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_common.grpc_client import create_channel
from tests.support.net import free_port, wait_for_port
from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import FakeNodeHealth, RunningScheduler, rpc_error, stub_for

SNAPSHOT, UPSERTED, REMOVED = (
    pb.CHANGE_KIND_SNAPSHOT,
    pb.CHANGE_KIND_UPSERTED,
    pb.CHANGE_KIND_REMOVED,
)


class Watch:
    """One ``WatchNodes`` stream; :meth:`next` is its next message (the test fails if none
    comes within 10 s, rather than hanging)."""

    def __init__(self, scheduler: RunningScheduler, model: str = "") -> None:
        self.call = scheduler.stub.WatchNodes(pb.WatchNodesRequest(model=model), timeout=60)

    async def next(self) -> pb.WatchNodesResponse:
        message = await asyncio.wait_for(self.call.read(), 10)
        assert message is not grpc.aio.EOF, "the stream ended"
        return message

    async def change(self) -> tuple[int, dict[str, Any]]:
        """The next message as (kind, node fields) of its one node."""
        message = await self.next()
        assert len(message.nodes) == 1, message
        node = message.nodes[0]
        fields = {"id": node.id, "state": node.state, "healthy": node.healthy}
        return message.kind, fields

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def watches() -> AsyncIterator[list[Watch]]:
    opened: list[Watch] = []
    yield opened
    for watch in opened:
        watch.close()


async def _watch(opened: list[Watch], scheduler: RunningScheduler, model: str = "") -> Watch:
    watch = Watch(scheduler, model)
    opened.append(watch)
    return watch


async def test_a_watcher_sees_the_snapshot_then_register_drain_and_deregister(
    scheduler: RunningScheduler, watches: list[Watch]
) -> None:
    await scheduler.register("a")
    watch = await _watch(watches, scheduler)
    first = await watch.next()
    assert first.kind == SNAPSHOT and [n.id for n in first.nodes] == ["a"]

    await scheduler.register("b", labels={"region": "eu"})
    assert await watch.change() == (
        UPSERTED,
        {"id": "b", "state": pb.NODE_STATE_READY, "healthy": True},
    )
    await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="b"))
    kind, node = await watch.change()
    assert (kind, node["id"], node["state"]) == (UPSERTED, "b", pb.NODE_STATE_DRAINING)
    await scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="b"))
    kind, node = await watch.change()
    assert (kind, node["id"]) == (REMOVED, "b")
    await scheduler.stub.Heartbeat(pb.HeartbeatRequest(node_id="a"))  # not a change worth a message
    await scheduler.register("c")
    assert (await watch.change())[1]["id"] == "c"


async def test_a_watcher_of_one_model_sees_only_that_models_nodes(
    scheduler: RunningScheduler, watches: list[Watch]
) -> None:
    await scheduler.register("other-1", model="other")
    watch = await _watch(watches, scheduler, model="m")
    assert list((await watch.next()).nodes) == []
    await scheduler.register("other-2", model="other")
    await scheduler.register("mine", model="m")
    assert (await watch.change())[1]["id"] == "mine"


async def test_health_changes_reach_the_watcher(
    start_scheduler: StartScheduler, node_health: FakeNodeHealth, watches: list[Watch]
) -> None:
    scheduler = await start_scheduler(
        HEALTH_PROBE_INTERVAL_S="0.05", BREAKER_FAILURES="2", BREAKER_OPEN_S="0"
    )
    await scheduler.register("n", endpoint=node_health.endpoint)
    watch = await _watch(watches, scheduler)
    assert [n.healthy for n in (await watch.next()).nodes] == [True]

    node_health.status = 503
    message = await watch.next()
    assert message.kind == UPSERTED and not message.nodes[0].healthy
    assert message.nodes[0].breaker in (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN)
    node_health.status = 200
    message = await watch.next()
    assert message.kind == UPSERTED and message.nodes[0].healthy
    assert message.nodes[0].breaker == pb.BREAKER_STATE_CLOSED


@pytest.fixture
async def scheduler_process(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    """A second scheduler as its own process (``python -m cic_scheduler``) on the same Redis
    and key prefix as the test's in-process schedulers; yields a stub for it."""
    port = free_port()
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "HEALTH_PROBE_INTERVAL_S": "3600",
        "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "cic_scheduler", env=env)
    try:
        await wait_for_port(port)
        channel = create_channel(f"127.0.0.1:{port}")
        yield stub_for(channel)
        await channel.close()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_a_change_made_through_another_scheduler_process_reaches_the_watcher(
    scheduler: RunningScheduler, scheduler_process: Any, watches: list[Watch]
) -> None:
    watch = await _watch(watches, scheduler)
    assert list((await watch.next()).nodes) == []

    await scheduler_process.RegisterNode(
        pb.RegisterNodeRequest(id="far", model="m", endpoint="http://127.0.0.1:1")
    )
    assert await watch.change() == (
        UPSERTED,
        {"id": "far", "state": pb.NODE_STATE_READY, "healthy": True},
    )
    await scheduler_process.DrainNode(pb.DrainNodeRequest(node_id="far"))
    assert (await watch.change())[1]["state"] == pb.NODE_STATE_DRAINING
    await scheduler_process.DeregisterNode(pb.DeregisterNodeRequest(node_id="far"))
    assert (await watch.change())[0] == REMOVED


async def test_a_malformed_model_filter_is_invalid_argument(scheduler: RunningScheduler) -> None:
    err = await rpc_error(Watch(scheduler, model="two words").next())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "model" in (err.details() or "")


async def test_watch_streams_end_when_the_scheduler_stops(
    start_scheduler: StartScheduler, watches: list[Watch]
) -> None:
    scheduler = await start_scheduler()
    watch = await _watch(watches, scheduler)
    await watch.next()
    await scheduler.service.stop(5)
    assert await asyncio.wait_for(watch.call.read(), 10) is grpc.aio.EOF
    assert await watch.call.code() == grpc.StatusCode.OK
