"""Leases go back to the scheduler in batches: one ReleaseNodes call at a time, carrying every
release made while the previous call was under way."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2
from cic_gateway import scheduler_client
from cic_gateway.scheduler_client import Lease, Outcome, SchedulerClient


class _Stub:
    def __init__(self, failures: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._failures = failures
        self._code = code

    async def ReleaseNodes(self, request: scheduler_pb2.ReleaseNodesRequest, timeout: float):
        self.calls.append([r.lease_id for r in request.releases])
        await self.gate.wait()
        if len(self.calls) <= self._failures:
            raise grpc.aio.AioRpcError(self._code, grpc.aio.Metadata(), grpc.aio.Metadata())
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


async def test_releases_wait_for_a_scheduler_that_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_client, "RELEASE_RETRY_FIRST_S", 0.01)
    stub = _Stub(failures=3)
    client = SchedulerClient(stub, route_stream=False)  # type: ignore[arg-type]
    client.release_soon(_lease(0), Outcome.OUTCOME_SUCCESS, 0, 0)
    await asyncio.sleep(0.015)  # during the back-off: l1 joins the batch that is tried again
    client.release_soon(_lease(1), Outcome.OUTCOME_SUCCESS, 0, 0)
    await client.drain(5)
    assert stub.calls[0] == ["l0"]
    assert stub.calls[-1] == ["l0", "l1"] and len(stub.calls) == 4


async def test_a_release_the_scheduler_refuses_is_not_sent_again() -> None:
    stub = _Stub(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    client = SchedulerClient(stub, route_stream=False)  # type: ignore[arg-type]
    client.release_soon(_lease(0), Outcome.OUTCOME_SUCCESS, 0, 0)
    await client.drain(5)
    client.release_soon(_lease(1), Outcome.OUTCOME_SUCCESS, 0, 0)
    await client.drain(5)
    assert stub.calls == [["l0"], ["l1"]]
