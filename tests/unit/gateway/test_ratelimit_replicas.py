"""Two real ``cic-gateway`` processes sharing one Redis, hammered at once with three times a key's
limit: no more than the limit gets through across both, and every other request gets a 429."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cic_vllm_sim.app import create_app as create_sim_app
from cic_vllm_sim.config import SimConfig
from tests.support.net import free_port
from tests.unit.gateway.conftest import ADMIN_TOKEN
from tests.unit.gateway.fakes import FakeServices

SIM_MODEL = "cic-sim-small"
RPM = 15
WINDOW_S = 60.0


@pytest.fixture
async def sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=SIM_MODEL)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def _start_gateway(env: dict[str, str], log: Path) -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cic_gateway",
            env={**env, "GATEWAY_PORT": str(port), "METRICS_PORT": str(free_port())},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return f"http://127.0.0.1:{port}", proc


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process):
    for _ in range(600):
        if proc.returncode is not None:
            raise AssertionError(f"cic-gateway exited with {proc.returncode}")
        try:
            async with session.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("cic-gateway never answered")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


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
    started = [await _start_gateway(env, tmp_path / f"gateway-{i}.log") for i in range(2)]
    try:
        async with aiohttp.ClientSession() as session:
            for url, proc in started:
                await _wait_ready(session, url, proc)
        yield [url for url, _ in started]
    finally:
        for _, proc in started:
            await _stop(proc)
    assert [proc.returncode for _, proc in started] == [0, 0]


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
