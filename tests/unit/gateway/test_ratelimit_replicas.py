"""Two real ``cic-gateway`` processes sharing one Redis, hammered at once with three times a key's
limit: no more than the limit gets through across both, and every other request gets a 429."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from cic_vllm_sim.app import create_app as create_sim_app
from cic_vllm_sim.config import SimConfig
from tests.unit.gateway.conftest import ADMIN_TOKEN
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.processes import gateway_replicas

SIM_MODEL = "cic-sim-small"
RPM = 15
WINDOW_S = 60.0


@pytest.fixture
async def sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=SIM_MODEL)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def two_gateways(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    services: FakeServices,
    sim: TestServer,
    tmp_path: Path,
) -> AsyncIterator[list[str]]:
    services.scheduler.add_node("sim-1", SIM_MODEL, f"http://127.0.0.1:{sim.port}")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        # A Redis hiccup must not let requests through unchecked here: it would be a 503.
        "RATE_LIMIT_FAIL_OPEN": "false",
        "RATE_LIMIT_REDIS_TIMEOUT_S": "5",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SCHEDULER_ADDR": services.address,
        "BILLING_ADDR": services.address,
        "ORCHESTRATOR_ADDR": services.address,
        "LOG_FORMAT": "console",
    }
    async with gateway_replicas(env, tmp_path) as urls:
        yield urls


async def test_two_replicas_never_let_more_than_the_limit_through(
    two_gateways: list[str],
) -> None:
    first, second = two_gateways
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            first + "/admin/tenants", json={"name": "R", "email": "r@example.com"}, headers=admin
        ) as resp:
            tenant = await resp.json()
        async with session.post(
            second + f"/admin/tenants/{tenant['id']}/keys",
            json={"name": "k", "rpm_limit": RPM},
            headers=admin,
        ) as resp:
            key = (await resp.json())["key"]

        body = {
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        }
        headers = {"Authorization": f"Bearer {key}"}

        async def one(url: str) -> int:
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                await resp.read()
                return resp.status

        loop = asyncio.get_running_loop()
        started = loop.time()
        statuses = await asyncio.gather(*(one(two_gateways[i % 2]) for i in range(3 * RPM)))
        elapsed = loop.time() - started

    admitted = statuses.count(200)
    # GCRA lets the whole minute's worth through at once, then one more every 60/RPM seconds.
    refilled = int(elapsed * RPM / WINDOW_S)
    assert RPM <= admitted <= RPM + refilled, (admitted, elapsed)
    assert statuses.count(429) == len(statuses) - admitted, sorted(set(statuses))


async def test_two_replicas_share_an_environments_concurrency_slots(
    two_gateways: list[str], sim: TestServer, redis_url: str, redis_prefix: str
) -> None:
    """Requests held open by the node across both replicas: exactly the environment's limit are
    in flight, the others are refused at once naming the environment; once the node answers,
    every slot is back (no lease left in Redis)."""
    limit, sent = 4, 6
    first, second = two_gateways
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            first + "/admin/tenants", json={"name": "C", "email": "c@example.com"}, headers=admin
        ) as resp:
            tenant = await resp.json()
        async with session.get(
            second + f"/admin/tenants/{tenant['id']}/environments", headers=admin
        ) as resp:
            production = (await resp.json())["data"][0]["id"]
        async with session.patch(
            first + f"/admin/environments/{production}",
            json={"concurrency_limit": limit},
            headers=admin,
        ) as resp:
            assert resp.status == 200
        async with session.post(
            second + f"/admin/tenants/{tenant['id']}/keys", json={"name": "k"}, headers=admin
        ) as resp:
            key = (await resp.json())["key"]
        sim_url = f"http://127.0.0.1:{sim.port}"
        async with session.post(sim_url + "/sim/config", json={"hang": True}) as resp:
            assert resp.status == 200

        body = {
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        }
        headers = {"Authorization": f"Bearer {key}"}

        async def one(url: str) -> tuple[int, str | None]:
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status, r.headers.get("x-ratelimit-scope")

        tasks = [asyncio.create_task(one(two_gateways[i % 2])) for i in range(sent)]
        done, pending = await asyncio.wait(tasks, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        deadline = asyncio.get_running_loop().time() + 30
        while len(done) < sent - limit:
            assert asyncio.get_running_loop().time() < deadline, [t.result() for t in done]
            more, pending = await asyncio.wait(
                pending, timeout=1, return_when=asyncio.FIRST_COMPLETED
            )
            done |= more
        assert sorted(t.result() for t in done) == [(429, "environment")] * (sent - limit)

        async with session.post(sim_url + "/sim/config", json={"hang": False}) as resp:
            assert resp.status == 200
        assert [status for status, _ in await asyncio.gather(*pending)] == [200] * limit

    redis = Redis.from_url(redis_url)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while [k async for k in redis.scan_iter(match=f"{redis_prefix}rl:*:concurrent")]:
            assert asyncio.get_running_loop().time() < deadline, "a slot was never given back"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
