"""Nodes through the gateway's admin API, end to end: a vLLM server that already runs registered
by endpoint, a node launched through the orchestrator, bad launches refused with OpenAI's error
shape, and a drain that leaves the registered server running."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from cic_devstack.stack import Stack
from tests.support.net import free_port, wait_for_port

SIM = str(Path(sys.executable).parent / "cic-vllm-sim")
MODEL = "cic-sim-small"


class Admin:
    def __init__(self, session: aiohttp.ClientSession, stack: Stack) -> None:
        self._session = session
        self._base = stack.gateway_url
        self._headers = {"X-Admin-Token": stack.config.admin_token}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self._session.request(
            method, self._base + path, json=body, headers=self._headers
        ) as reply:
            return reply.status, await reply.json()

    async def node_state(self, node_id: str) -> str | None:
        status, body = await self.call("GET", "/admin/nodes")
        assert status == 200, body
        for node in body["data"]:
            if node["id"] == node_id:
                return str(node["state"])
        return None

    async def wait_state(self, node_id: str, state: str | None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (current := await self.node_state(node_id)) != state:
            assert time.monotonic() < deadline, f"{node_id} is {current}, never {state}"
            await asyncio.sleep(0.1)


async def test_nodes_are_registered_launched_and_drained_through_the_admin_api(
    stack: Stack,
) -> None:
    port = free_port()
    on_prem = subprocess.Popen(
        [SIM, "--host", "127.0.0.1", "--port", str(port), "--model", MODEL],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, stack)
            status, registered = await admin.call(
                "POST", "/admin/nodes", {"endpoint": endpoint, "model": MODEL}
            )
            assert status == 201, registered
            assert (registered["endpoint"], registered["provider"]) == (endpoint, "external")
            await admin.wait_state(registered["id"], "ready")

            status, again = await admin.call(
                "POST", "/admin/nodes", {"endpoint": endpoint + "/", "model": MODEL}
            )
            assert status == 409 and again["error"]["code"] == "conflict", again

            status, launched = await admin.call(
                "POST",
                "/admin/nodes/launch",
                {
                    "model": MODEL,
                    "accelerators": "SIM:1",
                    "cloud": "local",
                    "vllm_args": ["--ttft-ms=1"],
                },
            )
            assert status == 202, launched
            assert (launched["state"], launched["vllm_args"]) == ("launching", ["--ttft-ms=1"])
            await admin.wait_state(launched["id"], "ready")

            for body, code, message in (
                (
                    {
                        "model": MODEL,
                        "accelerators": "SIM:1",
                        "cloud": "local",
                        "vllm_args": ["--port=1"],
                    },
                    400,
                    "vllm arg --port is not allowed",
                ),
                (
                    {"model": "m'; id", "accelerators": "SIM:1", "cloud": "local"},
                    400,
                    "model must be",
                ),
                (
                    {"model": MODEL, "accelerators": "H100:1", "cloud": "aws"},
                    409,
                    "no node provider for cloud `aws` is enabled",
                ),
            ):
                status, refused = await admin.call("POST", "/admin/nodes/launch", body)
                assert status == code, refused
                assert message in refused["error"]["message"]

            status, draining = await admin.call("DELETE", f"/admin/nodes/{registered['id']}")
            assert status == 202 and draining["state"] == "draining", draining
            await admin.wait_state(registered["id"], None)  # out of the scheduler
            assert on_prem.poll() is None  # a registered server is never stopped

            status, gone = await admin.call("DELETE", f"/admin/nodes/{registered['id']}")
            assert status == 409 and "already terminated" in gone["error"]["message"], gone
            status, unknown = await admin.call("DELETE", "/admin/nodes/node-ffffffffffff")
            assert status == 404, unknown
            status, malformed = await admin.call("DELETE", "/admin/nodes/not-a-node")
            assert status == 400, malformed
    finally:
        on_prem.terminate()
        on_prem.wait(timeout=10)
