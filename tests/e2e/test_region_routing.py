"""Region routing end to end: two servers of one model registered through the admin API in
regions `eu-west` and `us-east`; an environment preferring `eu-west` is served by the eu node
only, falls back to the us node once the eu node is drained, and billing's ledger keeps the
region of the node that served each request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import openai

from cic_devstack.stack import Stack
from tests.support.net import free_port, wait_for_port

SIM = str(Path(sys.executable).parent / "cic-vllm-sim")
MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Where are you?"}]


class Admin:
    def __init__(self, session: aiohttp.ClientSession, stack: Stack) -> None:
        self._session = session
        self._base = stack.gateway_url
        self._headers = {"X-Admin-Token": stack.config.admin_token}

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self._session.request(
            method, self._base + path, json=body, headers=self._headers
        ) as reply:
            answer = await reply.json()
            assert reply.status == expect, (method, path, reply.status, answer)
            return answer

    async def wait_scheduled(self, node_id: str, state: str | None, timeout: float = 30) -> None:
        """Until the scheduler lists the node in ``state`` (None: not at all)."""
        deadline = time.monotonic() + timeout
        while True:
            listed = await self.call("GET", "/admin/nodes")
            current = next((n["state"] for n in listed["data"] if n["id"] == node_id), None)
            if current == state:
                return
            assert time.monotonic() < deadline, f"{node_id} is {current}, never {state}"
            await asyncio.sleep(0.1)


def _server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SIM, "--host", "127.0.0.1", "--port", str(port), "--model", MODEL],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _ledger(database_url: str, tenant_id: str, rows: int) -> list[asyncpg.Record]:
    """Billing's rows for the tenant, once ``rows`` have arrived (usage trails the reply)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 15
        while True:
            found = await conn.fetch(
                "SELECT node_id, region FROM billing.usage_events WHERE tenant_id = $1"
                " ORDER BY finished_at",
                tenant_id,
            )
            if len(found) >= rows or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _chat(client: openai.AsyncOpenAI, times: int) -> None:
    for _ in range(times):
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].message.content


async def test_an_environment_is_served_in_its_region_then_falls_back(
    stack: Stack, database_url: str
) -> None:
    ports = {"eu-west": free_port(), "us-east": free_port()}
    servers = {region: _server(port) for region, port in ports.items()}
    try:
        for port in ports.values():
            await wait_for_port(port)
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, stack)
            # Only the two regional servers serve the model: the stack's own nodes leave.
            for node_id in stack.node_ids:
                await admin.call("DELETE", f"/admin/nodes/{node_id}", expect=202)
            nodes = {}
            for region, port in ports.items():
                body = {"endpoint": f"http://127.0.0.1:{port}", "model": MODEL, "region": region}
                nodes[region] = (await admin.call("POST", "/admin/nodes", body, expect=201))["id"]
            for node_id in stack.node_ids:
                await admin.wait_scheduled(node_id, None)
            for node_id in nodes.values():
                await admin.wait_scheduled(node_id, "ready")

            tenant = await admin.call(
                "POST", "/admin/tenants", {"name": "Euro", "email": "ops@euro.example"}, 201
            )
            environment = await admin.call(
                "POST",
                f"/admin/tenants/{tenant['id']}/environments",
                {"name": "eu", "region": "eu-west"},
                201,
            )
            key = await admin.call(
                "POST",
                f"/admin/tenants/{tenant['id']}/keys",
                {"name": "eu", "environment_id": environment["id"]},
                201,
            )

            client = openai.AsyncOpenAI(
                api_key=key["key"], base_url=f"{stack.gateway_url}/v1", max_retries=0
            )
            try:
                await _chat(client, 6)
                served = await _ledger(database_url, tenant["id"], 6)
                assert [(r["node_id"], r["region"]) for r in served] == [
                    (nodes["eu-west"], "eu-west")
                ] * 6

                await admin.call("DELETE", f"/admin/nodes/{nodes['eu-west']}", expect=202)
                await admin.wait_scheduled(nodes["eu-west"], None)
                await _chat(client, 3)
            finally:
                await client.close()
            served = await _ledger(database_url, tenant["id"], 9)
            assert [(r["node_id"], r["region"]) for r in served[6:]] == [
                (nodes["us-east"], "us-east")
            ] * 3
            assert servers["eu-west"].poll() is None  # drained, never stopped: it is registered
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=10)
