"""Leases go back to the scheduler in batches: one ReleaseNodes call at a time, carrying every
release made while the previous call was under way."""

from __future__ import annotations

import asyncio

import grpc

from cic.scheduler.v1 import scheduler_pb2
from cic_gateway.scheduler_client import Lease, Outcome, SchedulerClient


class _Stub:
    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._fail_first = fail_first

    async def ReleaseNodes(self, request: scheduler_pb2.ReleaseNodesRequest, timeout: float):
        self.calls.append([r.lease_id for r in request.releases])
        await self.gate.wait()
        if self._fail_first and len(self.calls) == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return scheduler_pb2.ReleaseNodesResponse()


def _lease(n: int) -> Lease:
    return Lease(lease_id=f"l{n}", node_id="n", model="m", endpoint="http://x")


async def test_releases_made_together_leave_in_one_call() -> None:
    stub = _Stub()
    client = SchedulerClient(stub)  # type: ignore[arg-type]
    for n in range(10):
        client.release_soon(_lease(n), Outcome.OUTCOME_SUCCESS, 1, 2)
    await client.drain(5)
    assert stub.calls == [[f"l{n}" for n in range(10)]]


async def test_releases_made_during_a_call_go_in_the_next_one() -> None:
    stub = _Stub()
    client = SchedulerClient(stub)  # type: ignore[arg-type]
    stub.gate.clear()
    client.release_soon(_lease(0), Outcome.OUTCOME_SUCCESS, 0, 0)
    await asyncio.sleep(0)  # the first call is now under way and held
    for n in range(1, 6):
        client.release_soon(_lease(n), Outcome.OUTCOME_NODE_ERROR, 0, 0)
    stub.gate.set()
    await client.drain(5)
    assert stub.calls == [["l0"], ["l1", "l2", "l3", "l4", "l5"]]


async def test_a_failed_call_does_not_stop_later_releases() -> None:
    stub = _Stub(fail_first=True)
    client = SchedulerClient(stub)  # type: ignore[arg-type]
    client.release_soon(_lease(0), Outcome.OUTCOME_SUCCESS, 0, 0)
    await client.drain(5)
    client.release_soon(_lease(1), Outcome.OUTCOME_SUCCESS, 0, 0)
    await client.drain(5)
    assert stub.calls == [["l0"], ["l1"]]
