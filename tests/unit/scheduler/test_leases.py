"""Leases that nobody releases are given back; node errors reported on release take a node out."""

from __future__ import annotations

import grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.support import eventually, rpc_error


async def test_sweeper_gives_back_leases_past_their_ttl(start_scheduler) -> None:
    scheduler = await start_scheduler(LEASE_TTL_S="0.2")
    await scheduler.register("n1")
    forgotten = await scheduler.pick()
    await scheduler.pick()
    assert (await scheduler.nodes())["n1"].in_flight == 2

    await eventually(scheduler.nodes, lambda nodes: nodes["n1"].in_flight == 0)

    async def gauge() -> float:
        return scheduler.sample("cic_scheduler_node_in_flight", node_id="n1", model="m")

    # The sweeper gives the leases back in Redis first, then reads the nodes again for the
    # gauges: a moment later.
    assert await eventually(gauge, lambda value: value == 0) == 0
    assert scheduler.sample("cic_scheduler_leases_expired_total") == 2

    await scheduler.release(forgotten.lease_id)
    assert scheduler.sample("cic_scheduler_unknown_lease_releases_total") == 1
    assert (await scheduler.nodes())["n1"].in_flight == 0


async def test_leases_within_their_ttl_are_kept(start_scheduler) -> None:
    scheduler = await start_scheduler(LEASE_TTL_S="600")
    await scheduler.register("n1")
    await scheduler.pick()
    await scheduler.service.scheduler.expire_leases()
    assert (await scheduler.nodes())["n1"].in_flight == 1
    assert scheduler.sample("cic_scheduler_leases_expired_total") == 0


async def test_consecutive_node_errors_make_a_node_unhealthy(start_scheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="3")
    await scheduler.register("n1")
    for _ in range(2):
        await scheduler.release((await scheduler.pick()).lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    assert (await scheduler.nodes())["n1"].healthy
    await scheduler.release((await scheduler.pick()).lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    assert not (await scheduler.nodes())["n1"].healthy
    err = await rpc_error(scheduler.pick())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert scheduler.sample("cic_scheduler_nodes", state="ready", healthy="false") == 1


async def test_a_success_resets_the_node_error_count(start_scheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="2")
    await scheduler.register("n1")
    outcomes = [
        pb.OUTCOME_NODE_ERROR,
        pb.OUTCOME_SUCCESS,
        pb.OUTCOME_NODE_ERROR,
        pb.OUTCOME_CLIENT_ERROR,
        pb.OUTCOME_UNSPECIFIED,
    ]
    for outcome in outcomes:
        await scheduler.release((await scheduler.pick()).lease_id, outcome=outcome)
    assert (await scheduler.nodes())["n1"].healthy
    await scheduler.release((await scheduler.pick()).lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    assert not (await scheduler.nodes())["n1"].healthy


async def test_reregistering_makes_a_node_healthy_again(start_scheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="1")
    await scheduler.register("n1")
    await scheduler.release((await scheduler.pick()).lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    assert not (await scheduler.nodes())["n1"].healthy
    node = await scheduler.register("n1")
    assert node.healthy
    assert (await scheduler.pick()).node.id == "n1"


async def test_deregistering_forgets_the_nodes_leases(scheduler) -> None:
    await scheduler.register("n1")
    lease = await scheduler.pick()
    await scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="n1"))
    await scheduler.release(lease.lease_id)
    assert scheduler.sample("cic_scheduler_unknown_lease_releases_total") == 1
    node = await scheduler.register("n1")
    assert node.in_flight == 0


async def test_release_nodes_gives_back_a_batch_in_one_call(start_scheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="2")
    await scheduler.register("n1")
    leases = [await scheduler.pick() for _ in range(4)]
    assert (await scheduler.nodes())["n1"].in_flight == 4
    batch = [
        pb.ReleaseNodeRequest(lease_id=lease.lease_id, outcome=pb.OUTCOME_NODE_ERROR)
        for lease in leases[:2]
    ]
    batch.append(pb.ReleaseNodeRequest(lease_id=""))  # skipped, not an error for the batch
    batch.append(pb.ReleaseNodeRequest(lease_id=leases[2].lease_id, outcome=pb.OUTCOME_SUCCESS))
    await scheduler.stub.ReleaseNodes(pb.ReleaseNodesRequest(releases=batch))
    nodes = await scheduler.nodes()
    assert nodes["n1"].in_flight == 1
    assert scheduler.sample("cic_scheduler_releases_total", outcome="node_error") == 2
