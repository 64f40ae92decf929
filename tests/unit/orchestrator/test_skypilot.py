"""The skypilot provider: SkyPilot's real SDK against a local stand-in for its API server, whose
clusters are simulator processes, so that a launched node really serves and really ends."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_common.db import open_pool
from tests.support.fake_skypilot import FakeSkyPilot
from tests.unit.orchestrator.conftest import (
    Orchestrator,
    answers,
    eventually,
    now,
    skypilot_env,
)
from tests.unit.orchestrator.test_agents import replacement_of


def sky_launch(model: str = "cic-sim-small", **fields) -> pb.LaunchNodeRequest:
    fields.setdefault("cloud", "aws/us-east-1")
    return pb.LaunchNodeRequest(model=model, accelerators="H100:1", **fields)


async def test_launch_through_skypilot_serves_then_terminate_tears_the_cluster_down(
    skypilot: FakeSkyPilot, start_orchestrator, scheduler
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    reply = await orchestrator.stub.LaunchNode(
        sky_launch(use_spot=True, vllm_args=["--max-model-len", "4096", "--enforce-eager"])
    )
    assert reply.node.state == pb.NODE_STATE_LAUNCHING
    assert (reply.node.provider, reply.node.use_spot) == ("skypilot", True)
    assert list(reply.node.vllm_args) == ["--max-model-len=4096", "--enforce-eager"]
    cluster = f"cic-{reply.node.id}"

    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    assert skypilot.running(cluster)
    assert node.endpoint == f"http://127.0.0.1:{skypilot.clusters[cluster].port}"
    assert await answers(node.endpoint)
    await eventually(now(lambda: node.id in scheduler.nodes), "registered")
    labels = scheduler.nodes[node.id].labels
    where = (labels["cloud"], labels["region"], labels["accelerator"])
    assert where == ("aws", "us-east-1", "H100")
    handle = await orchestrator.handle(node.id)
    assert handle["cluster"] == cluster
    assert skypilot.requests[handle["launch_request"]].name == "sky.launch"
    launched = skypilot.clusters[cluster].task_yaml
    assert "vllm serve cic-sim-small --host 0.0.0.0 --port 8000 --max-model-len=4096" in launched
    assert "use_spot: true" in launched and "infra: aws/us-east-1" in launched
    assert skypilot.calls[:2] == ["validate", f"launch {cluster}"]
    assert orchestrator.launches("skypilot", "ready") == 1

    await orchestrator.stub.TerminateNode(pb.TerminateNodeRequest(node_id=node.id))
    await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    assert cluster not in skypilot.clusters
    assert f"down {cluster}" in skypilot.calls
    assert scheduler.methods_for(node.id)[-2:] == ["DrainNode", "DeregisterNode"]


async def test_calls_are_answered_while_an_sdk_call_blocks(
    skypilot: FakeSkyPilot, start_orchestrator
) -> None:
    """The stand-in runs on the test's event loop, as the orchestrator does: an SDK call made
    on the loop would never get its answer. While sky.launch waits for it, calls go on."""
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    skypilot.launch_gate = asyncio.Event()
    node_id = (await orchestrator.stub.LaunchNode(sky_launch())).node.id
    await eventually(now(lambda: f"launch cic-{node_id}" in skypilot.calls), "sky.launch sent")
    for _ in range(3):
        assert (await orchestrator.node(node_id)).state == pb.NODE_STATE_LAUNCHING
        listed = await orchestrator.stub.ListNodes(pb.ListNodesRequest())
        assert [n.id for n in listed.nodes] == [node_id]
    assert await orchestrator.handle(node_id) == {}  # the request id is not known yet
    skypilot.launch_gate.set()
    await orchestrator.wait_state(node_id, pb.NODE_STATE_READY)


async def test_a_launch_skypilot_cannot_place_fails_with_its_reason(
    skypilot: FakeSkyPilot, start_orchestrator
) -> None:
    skypilot.fail_launches = True
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    reply = await orchestrator.stub.LaunchNode(sky_launch())
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason.startswith("sky launch failed: ResourcesUnavailableError")
    # Counted once the failed node's remains are cleaned up (after the state change).
    await eventually(now(lambda: orchestrator.launches("skypilot", "failed") == 1), "counted")
    assert f"down cic-{node.id}" in skypilot.calls


async def test_a_launch_that_takes_too_long_is_cancelled_and_torn_down(
    skypilot: FakeSkyPilot, start_orchestrator
) -> None:
    skypilot.provision_s = 60
    orchestrator: Orchestrator = await start_orchestrator(
        **skypilot_env(skypilot, SKYPILOT_LAUNCH_TIMEOUT_S="1")
    )
    reply = await orchestrator.stub.LaunchNode(sky_launch())
    cluster = f"cic-{reply.node.id}"
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == "not up within 1s"
    await eventually(now(lambda: orchestrator.launches("skypilot", "timeout") == 1), "counted")
    handle = await orchestrator.handle(node.id)
    assert skypilot.requests[handle["launch_request"]].status == "CANCELLED"
    assert cluster not in skypilot.clusters and f"down {cluster}" in skypilot.calls


BAD_LAUNCHES = [
    (sky_launch(cloud="nosuchcloud"), "SkyPilot refused the task"),
    (sky_launch(cloud="aws/us-east-1; id"), "cloud must be"),
    (pb.LaunchNodeRequest(model="m", cloud="aws"), "accelerators is required"),
    (sky_launch(vllm_args=["--trust-remote-code"]), "--trust-remote-code is not allowed"),
    (sky_launch(vllm_args=["--max-model-len=1\nrun: id"]), "needs a whole number"),
    (sky_launch(model="m'$(id)"), "model must be"),
]


async def test_bad_launches_are_refused_before_anything_is_stored(
    skypilot: FakeSkyPilot, start_orchestrator
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    for request, message in BAD_LAUNCHES:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.stub.LaunchNode(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in refused.value.details()
    assert list((await orchestrator.stub.ListNodes(pb.ListNodesRequest())).nodes) == []
    assert not any(call.startswith("launch") for call in skypilot.calls)


async def test_clusters_outlive_a_restart_and_orphans_are_torn_down(
    skypilot: FakeSkyPilot, start_orchestrator, scheduler, database_url: str
) -> None:
    first: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    node_id = (await first.stub.LaunchNode(sky_launch())).node.id
    node = await first.wait_state(node_id, pb.NODE_STATE_READY)
    await first.service.stop()
    assert skypilot.running(f"cic-{node_id}")  # not ended with the orchestrator
    assert (await _state(database_url, node_id)) == "ready"

    # What a crash leaves: a cluster whose launch was never recorded, one of a failed node,
    # and a node whose launch was still running (its request id known).
    skypilot.add_cluster("cic-node-0000000000ff")
    skypilot.add_cluster("cic-node-0000000000fe")
    skypilot.add_cluster("someone-elses-cluster")
    skypilot.provision_s = 0.5
    pending_cluster = "cic-node-0000000000fd"
    pending_request = await _submit_launch(skypilot, pending_cluster)
    pool = await open_pool(database_url, "orchestrator", "cic_orchestrator.migrations")
    try:
        for node_id_, state, handle in (
            ("node-0000000000fe", "failed", {"cluster": "cic-node-0000000000fe"}),
            (
                "node-0000000000fd",
                "launching",
                {"cluster": pending_cluster, "launch_request": pending_request},
            ),
        ):
            await pool.execute(
                "INSERT INTO nodes (id, model, provider, accelerators, cloud, state,"
                " provider_handle) VALUES ($1, 'cic-sim-small', 'skypilot', 'H100:1', 'aws',"
                " $2, $3::jsonb)",
                node_id_,
                state,
                json.dumps(handle),
            )
    finally:
        await pool.close()

    started = time.monotonic()
    second: Orchestrator = await start_orchestrator(
        **skypilot_env(skypilot, RECONCILE_INTERVAL_S="0.2", ORPHAN_GRACE_S="1")
    )
    # Not before the grace period: a cluster may belong to a launch being recorded.
    assert {"cic-node-0000000000ff", "cic-node-0000000000fe"} <= skypilot.clusters.keys()
    again = await second.wait_state(node_id, pb.NODE_STATE_READY)
    assert again.endpoint == node.endpoint
    resumed = await second.wait_state("node-0000000000fd", pb.NODE_STATE_READY)
    assert await answers(resumed.endpoint)

    def orphans_gone() -> bool:
        return not ({"cic-node-0000000000ff", "cic-node-0000000000fe"} & skypilot.clusters.keys())

    await eventually(now(orphans_gone), "orphan clusters torn down")
    assert time.monotonic() - started >= 1.0
    assert {f"cic-{node_id}", pending_cluster, "someone-elses-cluster"} <= skypilot.clusters.keys()


async def test_a_cluster_that_disappears_fails_its_node(
    skypilot: FakeSkyPilot, start_orchestrator, scheduler
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    node_id = (await orchestrator.stub.LaunchNode(sky_launch())).node.id
    await orchestrator.wait_state(node_id, pb.NODE_STATE_READY)
    await eventually(now(lambda: node_id in scheduler.nodes), "registered")
    skypilot.clusters[f"cic-{node_id}"].status = "STOPPED"  # e.g. a spot instance preempted
    node = await orchestrator.wait_state(node_id, pb.NODE_STATE_FAILED)
    assert node.failure_reason == f"cluster cic-{node_id} stopped"
    await eventually(now(lambda: node_id not in scheduler.nodes), "deregistered")
    # Capacity returns without an operator: a replacement cluster is launched like it.
    replacement = await replacement_of(orchestrator, node_id)
    assert (replacement.provider, replacement.cloud, replacement.accelerators) == (
        "skypilot",
        "aws/us-east-1",
        "H100:1",
    )
    await orchestrator.wait_state(replacement.id, pb.NODE_STATE_READY)
    assert skypilot.running(f"cic-{replacement.id}")


async def _state(database_url: str, node_id: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT state FROM orchestrator.nodes WHERE id = $1", node_id)
    finally:
        await conn.close()


async def _submit_launch(skypilot: FakeSkyPilot, cluster: str) -> str:
    """Submits a launch through the SDK as a crashed orchestrator would have."""
    from cic_orchestrator.providers.skypilot_sdk import SkyClient, point_sdk_at
    from cic_orchestrator.task import NodeTask, TaskSettings, task_config

    point_sdk_at(skypilot.endpoint)
    client = SkyClient()
    try:
        config = task_config(NodeTask("cic-sim-small", "H100:1", "aws"), TaskSettings())
        return await client.launch(config, cluster)
    finally:
        await client.close()


async def test_a_node_is_labelled_with_the_region_skypilot_placed_it_in(
    skypilot: FakeSkyPilot, start_orchestrator, scheduler
) -> None:
    """A launch that names only its cloud is labelled with the region SkyPilot chose, from the
    cluster's record (the scheduler picks by it; billing prices by it)."""
    orchestrator: Orchestrator = await start_orchestrator(**skypilot_env(skypilot))
    skypilot.default_region = "eu-west-1"
    reply = await orchestrator.stub.LaunchNode(sky_launch(cloud="aws"))
    node = await orchestrator.wait_state(reply.node.id, pb.NODE_STATE_READY)
    await eventually(now(lambda: node.id in scheduler.nodes), "registered")
    labels = dict(scheduler.nodes[node.id].labels)
    assert {k: labels.get(k) for k in ("cloud", "region", "accelerator", "provider")} == {
        "cloud": "aws",
        "region": "eu-west-1",
        "accelerator": "H100",
        "provider": "skypilot",
    }
