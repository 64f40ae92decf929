"""A control plane and a vLLM server stand-in for the node agent's tests (real HTTP servers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


async def eventually(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Polls a plain check until it is truthy; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Call:
    path: str
    authorization: str
    body: dict[str, Any]


@dataclass
class FakeControlPlane:
    """Answers the gateway's node API as the gateway would: ``{"state": ...}``."""

    calls: list[Call] = field(default_factory=list)
    state: str = "ready"
    url: str = ""

    def paths(self) -> list[str]:
        return [c.path.rsplit("/", 1)[1] for c in self.calls]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(Call(request.path, request.headers.get("Authorization", ""), body))
        return web.json_response({"state": self.state})


@dataclass
class FakeVllm:
    healthy: bool = False
    url: str = ""

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def control_plane() -> AsyncIterator[FakeControlPlane]:
    fake = FakeControlPlane()
    app = web.Application()
    app.router.add_post("/internal/nodes/{node_id}/{call}", fake.handle)
    runner, fake.url = await _serve(app)
    yield fake
    await runner.cleanup()


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVllm]:
    fake = FakeVllm()
    app = web.Application()
    app.router.add_get("/health", fake.health)
    runner, fake.url = await _serve(app)
    yield fake
    await runner.cleanup()
