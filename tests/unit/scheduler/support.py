"""Helpers for the scheduler's tests: a running scheduler and a node's stand-in /health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_scheduler.server import SchedulerService
from tests.support.net import free_port

T = TypeVar("T")


@dataclass
class RunningScheduler:
    service: SchedulerService
    stub: Any  # SchedulerServiceAsyncStub
    channel: grpc.aio.Channel
    metrics: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    async def register(self, node_id: str, model: str = "m", **fields: Any) -> pb.Node:
        fields.setdefault("endpoint", f"http://127.0.0.1:1/{node_id}")
        reply = await self.stub.RegisterNode(
            pb.RegisterNodeRequest(id=node_id, model=model, **fields)
        )
        return reply.node

    async def nodes(self, model: str = "") -> dict[str, pb.Node]:
        reply = await self.stub.ListNodes(pb.ListNodesRequest(model=model))
        return {n.id: n for n in reply.nodes}

    async def pick(self, model: str = "m", exclude: tuple[str, ...] = ()) -> pb.PickNodeResponse:
        return await self.stub.PickNode(pb.PickNodeRequest(model=model, exclude_node_ids=exclude))

    async def release(
        self, lease_id: str, outcome: int = pb.OUTCOME_SUCCESS, **tokens: int
    ) -> None:
        await self.stub.ReleaseNode(
            pb.ReleaseNodeRequest(lease_id=lease_id, outcome=outcome, **tokens)
        )


def stub_for(channel: grpc.aio.Channel) -> Any:
    return pb_grpc.SchedulerServiceStub(channel)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with (the test fails if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded")


async def eventually(probe: Callable[[], Awaitable[T]], until: Callable[[T], bool]) -> T:
    """Polls ``probe`` until its value satisfies ``until``; fails after 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held; last value: {value!r}")
        await asyncio.sleep(0.02)


class FakeNodeHealth:
    """A real HTTP server standing in for a node's ``/health``; its answer can be switched."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.calls = 0
        self.arrivals: list[float] = []  # loop time of each request
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _health(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.arrivals.append(asyncio.get_running_loop().time())
        if self.hang:
            await asyncio.sleep(30)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
