"""Registering, heart-beating, draining, listing and removing nodes over gRPC."""

from __future__ import annotations

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.support import RunningScheduler, rpc_error


async def test_register_then_list_shows_the_node(scheduler: RunningScheduler) -> None:
    node = await scheduler.register(
        "n1", model="cic-sim-small", endpoint="http://10.0.0.5:8000/", labels={"zone": "a"}
    )
    assert (node.id, node.model, node.endpoint) == ("n1", "cic-sim-small", "http://10.0.0.5:8000")
    assert node.state == pb.NODE_STATE_READY
    assert node.healthy and node.in_flight == 0
    assert node.last_heartbeat.seconds > 0
    listed = await scheduler.nodes()
    assert list(listed) == ["n1"]
    assert dict(listed["n1"].labels) == {"zone": "a"}


async def test_list_filters_by_model(scheduler: RunningScheduler) -> None:
    await scheduler.register("a1", model="a")
    await scheduler.register("b1", model="b")
    await scheduler.register("a2", model="a")
    assert list(await scheduler.nodes("a")) == ["a1", "a2"]
    assert list(await scheduler.nodes("b")) == ["b1"]
    assert list(await scheduler.nodes()) == ["a1", "a2", "b1"]


async def test_register_keeps_the_given_state(scheduler: RunningScheduler) -> None:
    node = await scheduler.register("n1", state=pb.NODE_STATE_LAUNCHING)
    assert node.state == pb.NODE_STATE_LAUNCHING


async def test_reregistering_updates_the_node_and_keeps_its_leases(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("n1", endpoint="http://10.0.0.5:8000")
    await scheduler.pick()
    await scheduler.pick()
    node = await scheduler.register("n1", endpoint="https://10.0.0.6:8443", labels={"v": "2"})
    assert node.endpoint == "https://10.0.0.6:8443"
    assert dict(node.labels) == {"v": "2"}
    assert node.in_flight == 2
    assert list(await scheduler.nodes()) == ["n1"]


async def test_heartbeat_updates_last_heartbeat(scheduler: RunningScheduler) -> None:
    registered = await scheduler.register("n1")
    reply = await scheduler.stub.Heartbeat(pb.HeartbeatRequest(node_id="n1"))
    assert reply.node.id == "n1"
    assert reply.node.last_heartbeat.ToDatetime() >= registered.last_heartbeat.ToDatetime()
    listed = await scheduler.nodes()
    assert listed["n1"].last_heartbeat == reply.node.last_heartbeat


async def test_heartbeat_of_unknown_node_is_not_found(scheduler: RunningScheduler) -> None:
    err = await rpc_error(scheduler.stub.Heartbeat(pb.HeartbeatRequest(node_id="ghost")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in (err.details() or "")


async def test_drain_marks_the_node_draining(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    reply = await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="n1"))
    assert reply.node.state == pb.NODE_STATE_DRAINING
    assert (await scheduler.nodes())["n1"].state == pb.NODE_STATE_DRAINING


async def test_drain_of_unknown_or_terminated_node_fails(scheduler: RunningScheduler) -> None:
    err = await rpc_error(scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="ghost")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await scheduler.register("gone", state=pb.NODE_STATE_TERMINATED)
    err = await rpc_error(scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="gone")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_deregister_removes_the_node(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    await scheduler.register("n2")
    await scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="n1"))
    assert list(await scheduler.nodes()) == ["n2"]
    err = await rpc_error(scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="n1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"id": "", "model": "m", "endpoint": "http://h:1"}, "id is required"),
        ({"id": "n", "model": "", "endpoint": "http://h:1"}, "model is required"),
        ({"id": "n 1", "model": "m", "endpoint": "http://h:1"}, "id must be printable"),
        ({"id": "n", "model": "m", "endpoint": ""}, "endpoint is required"),
        ({"id": "n", "model": "m", "endpoint": "10.0.0.5:8000"}, "http:// or https://"),
        ({"id": "n", "model": "m", "endpoint": "ftp://h:21"}, "http:// or https://"),
        ({"id": "n", "model": "m", "endpoint": "http://"}, "http:// or https://"),
        ({"id": "n", "model": "m", "endpoint": "http://h:99999"}, "not a valid URL"),
        ({"id": "n", "model": "m", "endpoint": "http://u:p@h:1"}, "credentials"),
        ({"id": "n", "model": "m", "endpoint": "http://h:1/?a=b"}, "query"),
        ({"id": "n", "model": "m", "endpoint": "http://h:1", "state": 42}, "unknown node state"),
    ],
)
async def test_register_rejects_bad_input(
    scheduler: RunningScheduler, fields: dict[str, object], complaint: str
) -> None:
    err = await rpc_error(scheduler.stub.RegisterNode(pb.RegisterNodeRequest(**fields)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (err.details() or "")
    assert await scheduler.nodes() == {}


async def test_rpcs_naming_a_node_reject_an_empty_id(scheduler: RunningScheduler) -> None:
    calls = [
        scheduler.stub.Heartbeat(pb.HeartbeatRequest()),
        scheduler.stub.DrainNode(pb.DrainNodeRequest()),
        scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest()),
        scheduler.stub.PickNode(pb.PickNodeRequest()),
        scheduler.stub.ReleaseNode(pb.ReleaseNodeRequest()),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_node_gauges_follow_the_registry(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    await scheduler.register("n2")
    await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="n2"))
    assert scheduler.sample("cic_scheduler_nodes", state="ready", healthy="true") == 1
    assert scheduler.sample("cic_scheduler_nodes", state="draining", healthy="true") == 1
    await scheduler.pick()
    assert scheduler.sample("cic_scheduler_node_in_flight", node_id="n1", model="m") == 1
    await scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="n1"))
    assert (
        scheduler.metrics.get_sample_value(
            "cic_scheduler_node_in_flight", {"node_id": "n1", "model": "m"}
        )
        is None
    )
    assert scheduler.sample("cic_scheduler_nodes", state="ready", healthy="true") == 0
