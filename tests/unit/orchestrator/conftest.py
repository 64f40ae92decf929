"""Fixtures for the orchestrator's tests: a fake scheduler over real gRPC, and real
orchestrators built through the factory on port 0 against the test's own Postgres."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import grpc
import psutil
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic_common.settings import parse_settings
from cic_orchestrator.config import Settings
from cic_orchestrator.server import OrchestratorService, create_service
from tests.support.fake_skypilot import FakeSkyPilot
from tests.support.teardown import stop_or_explain
from tests.unit.orchestrator.fake_scheduler import FakeScheduler

T = TypeVar("T")
HERE = Path(__file__).parent
NEVER_SERVES = f"{sys.executable} {HERE / 'never_serves.py'}"


def now(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A plain check made awaitable, for :func:`eventually`."""

    async def run() -> T:
        return check()

    return run


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 20.0) -> T:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what} (last: {result!r})")
        await asyncio.sleep(0.05)


def process_runs(handle: dict[str, Any]) -> bool:
    """Whether the process a node handle names still runs (a zombie does not)."""
    try:
        process = psutil.Process(handle["pid"])
        if abs(process.create_time() - handle["started_at"]) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Orchestrator:
    service: OrchestratorService
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub
    registry: CollectorRegistry
    database_url: str
    channel: grpc.aio.Channel

    async def node(self, node_id: str) -> pb.ManagedNode:
        return (await self.stub.GetNode(pb.GetNodeRequest(node_id=node_id))).node

    async def wait_state(self, node_id: str, state: int, timeout: float = 20.0) -> pb.ManagedNode:
        async def reached() -> pb.ManagedNode | None:
            node = await self.node(node_id)
            return node if node.state == state else None

        return await eventually(reached, f"{node_id} in {pb.NodeState.Name(state)}", timeout)

    async def handle(self, node_id: str) -> dict[str, Any]:
        return await provider_handle(self.database_url, node_id)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def launches(self, provider: str, outcome: str) -> float | None:
        return self.metric("cic_orchestrator_launches_total", provider=provider, outcome=outcome)


async def provider_handle(database_url: str, node_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT provider_handle::text FROM orchestrator.nodes WHERE id = $1", node_id
        )
    finally:
        await conn.close()
    return json.loads(value)


@pytest.fixture
async def scheduler() -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler()
    await fake.start()
    yield fake
    await stop_or_explain(fake.stop(), "stopping the fake scheduler")


@pytest.fixture
async def skypilot() -> AsyncIterator[FakeSkyPilot]:
    """SkyPilot's API server as the real SDK sees it; its clusters are simulator processes.
    Ask for it before ``start_orchestrator``, so that it outlives the orchestrators."""
    fake = FakeSkyPilot()
    await fake.start()
    yield fake
    await stop_or_explain(fake.stop(), "stopping the SkyPilot stand-in")


def skypilot_env(fake: FakeSkyPilot, **env: str) -> dict[str, str]:
    """Settings for an orchestrator with the skypilot provider pointed at ``fake``."""
    return {
        "NODE_PROVIDERS": "local,skypilot",
        "SKYPILOT_API_SERVER_ENDPOINT": fake.endpoint,
        "SKYPILOT_POLL_INTERVAL_S": "0.05",
        **env,
    }


def settings_for(database_url: str, scheduler_addr: str, **env: str) -> Settings:
    values = {
        "DATABASE_URL": database_url,
        "SCHEDULER_ADDR": scheduler_addr,
        "GRPC_PORT": "0",
        "HEARTBEAT_INTERVAL_S": "0.1",
        "HEALTH_POLL_INTERVAL_S": "0.05",
        "LAUNCH_TIMEOUT_S": "20",
        "DRAIN_TIMEOUT_S": "20",
        "SHUTDOWN_GRACE_S": "1",
        **env,
    }
    return parse_settings(Settings, values)


@pytest.fixture
async def start_orchestrator(
    database_url: str, scheduler: FakeScheduler
) -> AsyncIterator[Callable[..., Awaitable[Orchestrator]]]:
    """Starts a real orchestrator; keyword arguments are extra environment variables."""
    running: list[tuple[Orchestrator, grpc.aio.Channel]] = []

    async def start(**env: str) -> Orchestrator:
        registry = CollectorRegistry()
        service = await create_service(
            settings_for(database_url, scheduler.address, **env), registry
        )
        port = await service.start(host="127.0.0.1")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        orchestrator = Orchestrator(service, stub, registry, database_url, channel)
        running.append((orchestrator, channel))
        return orchestrator

    yield start
    for orchestrator, channel in running:
        await channel.close()
        await stop_or_explain(orchestrator.service.stop(), "stopping an orchestrator")


@pytest.fixture
async def orchestrator(start_orchestrator: Callable[..., Awaitable[Orchestrator]]) -> Orchestrator:
    return await start_orchestrator()


def local_launch(model: str = "cic-sim-small", **fields: Any) -> pb.LaunchNodeRequest:
    return pb.LaunchNodeRequest(model=model, accelerators="SIM:1", cloud="local", **fields)


@pytest.fixture
async def running_server() -> AsyncIterator[str]:
    """A real HTTP server standing for a vLLM server someone already runs."""

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def answers(endpoint: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/health") as reply:
        return reply.status == 200
