"""The real gateway app (built by ``create_app``, run by ``create_runner`` on a real port) with
real Postgres and Redis, fake gRPC services on port 0 and a small vLLM-like node."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from cic_common.settings import parse_settings
from cic_gateway.app import create_app, create_runner
from cic_gateway.config import GatewaySettings
from tests.support.teardown import stop_or_explain
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sims import SIM_MODEL, SimFarm
from tests.unit.gateway.upstream import FakeNode

MODEL = "test-model"
ADMIN_TOKEN = "admin-" + "x" * 40


@dataclass
class Gateway:
    url: str
    app: web.Application
    services: FakeServices
    node: FakeNode
    session: aiohttp.ClientSession
    registry: CollectorRegistry

    def admin_headers(self) -> dict[str, str]:
        return {"X-Admin-Token": ADMIN_TOKEN}

    async def admin(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=json, headers=self.admin_headers()
        ) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body

    async def new_key(self, email: str | None = None, **key_fields: Any) -> tuple[str, str, str]:
        """A fresh tenant and key (``key_fields`` added to its body, e.g. ``role="admin"``):
        (tenant id, key id, key)."""
        email = email or f"t-{secrets.token_hex(4)}@example.com"
        status, tenant = await self.admin("POST", "/admin/tenants", {"name": "T", "email": email})
        assert status == 201, tenant
        body = {"name": "k", **key_fields}
        status, key = await self.admin("POST", f"/admin/tenants/{tenant['id']}/keys", body)
        assert status == 201, key
        return tenant["id"], key["id"], key["key"]


def gateway_settings(
    database_url: str, redis_url: str, grpc_address: str, **extra: str
) -> GatewaySettings:
    environ = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SCHEDULER_ADDR": grpc_address,
        "BILLING_ADDR": grpc_address,
        "ORCHESTRATOR_ADDR": grpc_address,
        "USAGE_FLUSH_INTERVAL_S": "0.05",
        "SHUTDOWN_GRACE_S": "5",
        **extra,
    }
    return parse_settings(GatewaySettings, environ)


@pytest.fixture
async def services() -> AsyncIterator[FakeServices]:
    fakes = FakeServices()
    await fakes.start()
    yield fakes
    await fakes.stop()


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    fake = FakeNode(model=MODEL)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def sims() -> AsyncIterator[SimFarm]:
    """Simulated vLLM nodes started by the test (``await sims.start(...)``), stopped after."""
    farm = SimFarm()
    yield farm
    await farm.close()


StartGateway = Callable[..., Any]


@pytest.fixture
async def start_gateway(
    database_url: str, redis_url: str, redis_prefix: str, services: FakeServices, node: FakeNode
) -> AsyncIterator[StartGateway]:
    """Starts a gateway (settings overridable per test); all are stopped afterwards."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**extra: str) -> Gateway:
        # The test's own Redis keys (the usage outbox is a stream every replica shares).
        extra.setdefault("REDIS_KEY_PREFIX", redis_prefix)
        settings = gateway_settings(database_url, redis_url, services.address, **extra)
        registry = CollectorRegistry()
        app = create_app(settings, registry=registry)
        runner = create_runner(app, settings)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Gateway(f"http://127.0.0.1:{port}", app, services, node, session, registry)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await stop_or_explain(runner.cleanup(), "stopping a gateway")


@pytest.fixture
async def sim_gateway(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> Gateway:
    """A gateway whose one node is a real simulator (vLLM's own validation and answers)."""
    sim = await sims.start()
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    return await start_gateway()


@pytest.fixture
async def gateway(start_gateway: StartGateway, services: FakeServices, node: FakeNode) -> Gateway:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    return await start_gateway()
