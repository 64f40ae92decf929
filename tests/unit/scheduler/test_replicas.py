"""Scheduler replicas: two real ``cic-scheduler`` processes on one Redis key prefix answer the
same, and their picks, releases and breaker transitions stay exact when they race."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_common.grpc_client import create_channel
from tests.support.net import free_port, wait_for_port
from tests.unit.scheduler.support import RunningScheduler, stub_for

SCHEDULER_BIN = Path(sys.executable).parent / "cic-scheduler"


class Replica:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.channel = create_channel(f"127.0.0.1:{port}")
        self.stub = stub_for(self.channel)

    async def pick(self, model: str = "m") -> pb.PickNodeResponse | None:
        """The pick, or None when the scheduler answered UNAVAILABLE."""
        try:
            return await self.stub.PickNode(pb.PickNodeRequest(model=model))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            return None

    async def release(self, lease_id: str, outcome: int = pb.OUTCOME_SUCCESS) -> None:
        await self.stub.ReleaseNode(pb.ReleaseNodeRequest(lease_id=lease_id, outcome=outcome))

    async def nodes(self) -> dict[str, pb.Node]:
        return {n.id: n for n in (await self.stub.ListNodes(pb.ListNodesRequest())).nodes}


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[list[Replica]]:
    """Two scheduler processes sharing the test's Redis prefix (breaker: 3 errors, open 0.5 s)."""
    started: list[Replica] = []
    try:
        for _ in range(2):
            port = free_port()
            environ = {
                k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "METRICS_"))
            }
            environ.update(
                GRPC_PORT=str(port),
                METRICS_PORT="0",
                REDIS_URL=redis_url,
                REDIS_KEY_PREFIX=redis_prefix,
                HEALTH_PROBE_INTERVAL_S="3600",
                BREAKER_FAILURES="3",
                BREAKER_OPEN_S="0.5",
                LOG_LEVEL="WARNING",
            )
            process = await asyncio.create_subprocess_exec(
                str(SCHEDULER_BIN), env=environ, stdout=asyncio.subprocess.DEVNULL
            )
            started.append(Replica(process, port))
            await wait_for_port(port)
        yield started
    finally:  # also when one failed to start: none is left running
        for replica in started:
            await replica.channel.close()
            if replica.process.returncode is None:
                replica.process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(r.process.wait(), timeout=30) for r in started]
    assert codes == [0] * len(started)


async def test_a_node_registered_on_one_replica_is_listed_and_picked_on_the_other(
    replicas: list[Replica],
) -> None:
    first, second = replicas
    labels = {"cloud": "gcp", "region": "europe-west4", "accelerator": "L4"}
    request = pb.RegisterNodeRequest(id="n1", model="m", endpoint="http://10.0.0.5:8000")
    request.labels.update(labels)
    await first.stub.RegisterNode(request)
    listed = (await second.nodes())["n1"]
    assert (listed.endpoint, dict(listed.labels), listed.healthy) == (
        "http://10.0.0.5:8000",
        labels,
        True,
    )
    pick = await second.pick()
    assert pick is not None and pick.node.id == "n1"
    assert (await first.nodes())["n1"].in_flight == 1
    await first.release(pick.lease_id)
    assert (await second.nodes())["n1"].in_flight == 0


async def test_racing_picks_on_both_replicas_stay_exactly_least_loaded(
    replicas: list[Replica],
) -> None:
    for node_id in ("n1", "n2", "n3", "n4"):
        request = pb.RegisterNodeRequest(id=node_id, model="m", endpoint="http://10.0.0.5:8000")
        await replicas[0].stub.RegisterNode(request)
    picks = await asyncio.gather(*(replicas[i % 2].pick() for i in range(400)))
    assert all(p is not None for p in picks)
    assert {n.in_flight for n in (await replicas[1].nodes()).values()} == {100}
    leases = [p.lease_id for p in picks if p is not None]
    await asyncio.gather(*(replicas[i % 2].release(lease) for i, lease in enumerate(leases[:250])))
    await asyncio.gather(*(replicas[i % 2].release(lease) for i, lease in enumerate(leases[:50])))
    in_flight = {n.id: n.in_flight for n in (await replicas[0].nodes()).values()}
    assert sum(in_flight.values()) == 150
    by_node = {node_id: 0 for node_id in in_flight}
    for pick in picks[250:]:
        assert pick is not None
        by_node[pick.node.id] += 1
    assert in_flight == by_node


async def test_the_breaker_admits_one_trial_across_both_replicas(replicas: list[Replica]) -> None:
    first, second = replicas
    await first.stub.RegisterNode(
        pb.RegisterNodeRequest(id="n1", model="m", endpoint="http://10.0.0.5:8000")
    )
    leases = await asyncio.gather(*(replicas[i % 2].pick() for i in range(60)))
    errors = [
        replicas[i % 2].release(lease.lease_id, pb.OUTCOME_NODE_ERROR)
        for i, lease in enumerate(leases)
        if lease is not None
    ]
    await asyncio.gather(*errors)
    assert not (await second.nodes())["n1"].healthy
    trials: list[pb.PickNodeResponse] = []
    for _ in range(200):  # rounds of racing picks until the breaker is half-open (0.5 s)
        round_picks = await asyncio.gather(*(replicas[i % 2].pick() for i in range(100)))
        trials = [p for p in round_picks if p is not None]
        if trials:
            break
        await asyncio.sleep(0.02)
    assert len(trials) == 1
    assert not any(await asyncio.gather(*(replicas[i % 2].pick() for i in range(100))))
    await second.release(trials[0].lease_id, pb.OUTCOME_SUCCESS)
    assert (await first.nodes())["n1"].healthy
    assert all(await asyncio.gather(*(replicas[i % 2].pick() for i in range(20))))


async def test_hundreds_of_racing_picks_and_releases_leave_in_flight_exact(
    start_scheduler,
) -> None:
    schedulers: list[RunningScheduler] = [await start_scheduler() for _ in range(2)]
    for node_id in ("n1", "n2", "n3"):
        await schedulers[0].register(node_id)

    async def worker(index: int) -> str | None:
        scheduler = schedulers[index % 2]
        lease = await scheduler.pick()
        if index % 3 == 0:
            return lease.lease_id  # kept
        await schedulers[(index + 1) % 2].release(lease.lease_id)
        await scheduler.release(lease.lease_id)  # a second release is ignored
        return None

    kept = [lease for lease in await asyncio.gather(*(worker(i) for i in range(600))) if lease]
    nodes = await schedulers[1].nodes()
    assert sum(n.in_flight for n in nodes.values()) == len(kept) == 200
    await asyncio.gather(*(schedulers[i % 2].release(lease) for i, lease in enumerate(kept)))
    assert {n.in_flight for n in (await schedulers[0].nodes()).values()} == {0}
