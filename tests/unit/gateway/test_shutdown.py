"""``cic-gateway`` as a real process: on SIGTERM it stops taking connections, lets a stream in
flight finish, flushes buffered usage to billing, and exits 0."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cic_vllm_sim.app import create_app as create_sim_app
from cic_vllm_sim.config import SimConfig
from tests.support.net import free_port
from tests.unit.gateway.conftest import ADMIN_TOKEN
from tests.unit.gateway.fakes import FakeServices

SIM_MODEL = "cic-sim-small"


@pytest.fixture
async def slow_sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=SIM_MODEL, itl_ms=40)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def _wait_ready(
    session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(400):
        if proc.returncode is not None:
            raise AssertionError(f"cic-gateway exited with {proc.returncode}")
        try:
            async with session.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("cic-gateway never became ready")


async def _refuses_connections(session: aiohttp.ClientSession, url: str) -> bool:
    for _ in range(200):
        try:
            async with session.get(url + "/healthz"):
                pass
        except aiohttp.ClientConnectionError:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_sigterm_finishes_streams_flushes_usage_and_exits_0(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    services: FakeServices,
    slow_sim: TestServer,
) -> None:
    services.scheduler.add_node("sim-1", SIM_MODEL, f"http://127.0.0.1:{slow_sim.port}")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SCHEDULER_ADDR": services.address,
        "BILLING_ADDR": services.address,
        "ORCHESTRATOR_ADDR": services.address,
        "GATEWAY_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "SHUTDOWN_GRACE_S": "20",
        # Usage is sent only when the process stops: this test sees the flush on shutdown.
        "USAGE_FLUSH_INTERVAL_S": "60",
        "LOG_FORMAT": "console",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cic_gateway",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, url, proc)
            async with session.post(
                url + "/admin/tenants", json={"name": "S", "email": "s@example.com"}, headers=admin
            ) as resp:
                tenant = await resp.json()
            async with session.post(
                url + f"/admin/tenants/{tenant['id']}/keys", json={"name": "k"}, headers=admin
            ) as resp:
                key = (await resp.json())["key"]

            body = {
                "model": SIM_MODEL,
                "messages": [{"role": "user", "content": "count slowly"}],
                "max_tokens": 40,
                "stream": True,
            }
            async with aiohttp.ClientSession() as stream_session:
                resp = await stream_session.post(
                    url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert resp.status == 200
                first = await resp.content.readany()
                assert first.startswith(b"data: ")
                proc.send_signal(signal.SIGTERM)

                assert await _refuses_connections(session, url)
                rest = await resp.read()
                assert (first + rest).rstrip().endswith(b"data: [DONE]")

            code = await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        output = (await proc.stdout.read()).decode() if proc.stdout else ""
    assert code == 0, output
    assert [(e.completion_tokens, e.streamed, e.status_code) for e in services.billing.events] == [
        (40, True, 200)
    ], output
    (release,) = services.scheduler.releases
    assert release.completion_tokens == 40
