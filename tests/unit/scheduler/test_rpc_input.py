"""Bad input to the RPCs this issue added or extended is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.support import RunningScheduler, rpc_error


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"model": "m", "prefix_key": "k" * 129}, "prefix_key"),
        ({"model": "m", "prefix_key": "bad\nkey"}, "prefix_key"),
        ({"model": "m", "exclude_node_ids": ["two words"]}, "exclude_node_ids"),
        ({"model": "m", "exclude_node_ids": [f"n{i}" for i in range(257)]}, "exclude_node_ids"),
        ({"model": ""}, "model"),
    ],
)
async def test_pick_node_checks_its_fields(
    scheduler: RunningScheduler, request_fields: dict, field: str
) -> None:
    await scheduler.register("n")
    err = await rpc_error(scheduler.stub.PickNode(pb.PickNodeRequest(**request_fields)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.details() or "")


async def test_list_nodes_and_release_node_check_their_fields(scheduler: RunningScheduler) -> None:
    err = await rpc_error(scheduler.stub.ListNodes(pb.ListNodesRequest(model="a b")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "model" in (err.details() or "")
    err = await rpc_error(scheduler.stub.ReleaseNode(pb.ReleaseNodeRequest(lease_id="x" * 129)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "lease_id" in (err.details() or "")


async def test_a_pick_with_a_prefix_key_and_exclusions_succeeds(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("a")
    await scheduler.register("b")
    reply = await scheduler.stub.PickNode(
        pb.PickNodeRequest(model="m", prefix_key="0123456789abcdef", exclude_node_ids=["a"])
    )
    assert reply.node.id == "b" and reply.lease_id
