"""Choosing a node: least loaded, only ready and healthy ones, exclusions, and the two refusals."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.support import RunningScheduler, rpc_error


async def test_concurrent_picks_spread_evenly(scheduler: RunningScheduler) -> None:
    for node_id in ("n1", "n2", "n3"):
        await scheduler.register(node_id)
    picks = await asyncio.gather(*(scheduler.pick() for _ in range(30)))
    assert Counter(p.node.id for p in picks) == {"n1": 10, "n2": 10, "n3": 10}
    assert len({p.lease_id for p in picks}) == 30
    assert {n.in_flight for n in (await scheduler.nodes()).values()} == {10}


async def test_pick_goes_to_the_least_loaded_node(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    await scheduler.register("n2")
    first = await scheduler.pick()
    second = await scheduler.pick()
    assert {first.node.id, second.node.id} == {"n1", "n2"}
    await scheduler.release(first.lease_id)
    third = await scheduler.pick()
    assert third.node.id == first.node.id
    assert third.node.in_flight == 1


async def test_idle_nodes_take_turns(scheduler: RunningScheduler) -> None:
    for node_id in ("n1", "n2", "n3"):
        await scheduler.register(node_id)
    chosen = []
    for _ in range(9):
        pick = await scheduler.pick()
        chosen.append(pick.node.id)
        await scheduler.release(pick.lease_id)
    assert Counter(chosen) == {"n1": 3, "n2": 3, "n3": 3}


async def test_release_gives_the_slot_back(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    leases = [(await scheduler.pick()).lease_id for _ in range(3)]
    assert (await scheduler.nodes())["n1"].in_flight == 3
    for lease_id in leases:
        await scheduler.release(lease_id, prompt_tokens=5, completion_tokens=7)
    assert (await scheduler.nodes())["n1"].in_flight == 0
    assert scheduler.sample("cic_scheduler_node_in_flight", node_id="n1", model="m") == 0
    tokens = scheduler.sample("cic_scheduler_released_tokens_total", model="m", kind="completion")
    assert tokens == 21


async def test_releasing_twice_is_harmless(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    held = await scheduler.pick()
    other = await scheduler.pick()
    await scheduler.release(held.lease_id)
    await scheduler.release(held.lease_id)
    await scheduler.release("never-issued")
    assert (await scheduler.nodes())["n1"].in_flight == 1
    assert scheduler.sample("cic_scheduler_unknown_lease_releases_total") == 2
    await scheduler.release(other.lease_id)
    assert (await scheduler.nodes())["n1"].in_flight == 0


async def test_picks_only_the_requested_model(scheduler: RunningScheduler) -> None:
    await scheduler.register("a1", model="a")
    await scheduler.register("b1", model="b")
    picks = [await scheduler.pick("b") for _ in range(4)]
    assert {p.node.id for p in picks} == {"b1"}
    assert all(p.node.model == "b" for p in picks)


async def test_drained_node_gets_no_picks_but_keeps_its_leases(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("n1")
    await scheduler.register("n2")
    held = [await scheduler.pick() for _ in range(2)]
    await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="n1"))
    picks = [await scheduler.pick() for _ in range(5)]
    assert {p.node.id for p in picks} == {"n2"}
    assert (await scheduler.nodes())["n1"].in_flight == 1
    for lease in held:
        await scheduler.release(lease.lease_id)
    assert (await scheduler.nodes())["n1"].in_flight == 0


async def test_exclude_node_ids_skips_those_nodes(scheduler: RunningScheduler) -> None:
    for node_id in ("n1", "n2", "n3"):
        await scheduler.register(node_id)
    picks = [await scheduler.pick(exclude=("n1", "n3")) for _ in range(4)]
    assert {p.node.id for p in picks} == {"n2"}
    err = await rpc_error(scheduler.pick(exclude=("n1", "n2", "n3")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_unknown_model_is_not_found(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1", model="other")
    err = await rpc_error(scheduler.pick("missing"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model `missing` is not served"
    assert scheduler.sample(
        "cic_scheduler_picks_total",
        model="_unknown",
        policy="least_loaded",
        outcome="unknown_model",
    )


async def test_model_with_only_terminated_nodes_is_not_found(scheduler: RunningScheduler) -> None:
    await scheduler.register("t1", state=pb.NODE_STATE_TERMINATED)
    await scheduler.register("f1", state=pb.NODE_STATE_FAILED)
    err = await rpc_error(scheduler.pick())
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_model_without_a_ready_node_is_unavailable(scheduler: RunningScheduler) -> None:
    await scheduler.register("l1", state=pb.NODE_STATE_LAUNCHING)
    await scheduler.register("d1")
    await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="d1"))
    err = await rpc_error(scheduler.pick())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "no ready node for model `m`"
    assert (
        scheduler.sample(
            "cic_scheduler_picks_total", model="m", policy="least_loaded", outcome="no_node"
        )
        == 1
    )


async def test_unhealthy_node_gets_no_picks(start_scheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="1")
    await scheduler.register("sick")
    await scheduler.register("fine")
    first = await scheduler.pick()
    await scheduler.release(first.lease_id, outcome=pb.OUTCOME_NODE_ERROR)
    healthy = {n.id: n.healthy for n in (await scheduler.nodes()).values()}
    assert healthy == {first.node.id: False, ({"sick", "fine"} - {first.node.id}).pop(): True}
    picks = [await scheduler.pick() for _ in range(3)]
    assert first.node.id not in {p.node.id for p in picks}


async def test_pick_metrics_count_successes(scheduler: RunningScheduler) -> None:
    await scheduler.register("n1")
    for _ in range(3):
        await scheduler.pick()
    assert (
        scheduler.sample(
            "cic_scheduler_picks_total", model="m", policy="least_loaded", outcome="ok"
        )
        == 3
    )
    assert scheduler.sample("cic_scheduler_pick_duration_seconds_count") == 3
