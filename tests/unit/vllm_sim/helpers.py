"""Helpers for the simulator's tests: request bodies, stream parsing, stats polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

MODEL = "cic-sim-small"
SimFactory = Callable[..., Awaitable[TestClient]]


def chat_body(content: str = "Hello there!", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def parse_events(text: str) -> list[Any]:
    """The SSE events of a stream body: decoded JSON objects, or the string "[DONE]"."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def read_events(response: ClientResponse) -> list[Any]:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    return parse_events(await response.text())


async def stats(client: TestClient) -> dict[str, Any]:
    response = await client.get("/sim/stats")
    return dict(await response.json())


async def wait_for_stats(
    client: TestClient, ready: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """Poll /sim/stats until ``ready`` holds (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        current = await stats(client)
        if ready(current):
            return current
        assert time.monotonic() < deadline, f"stats never became ready: {current}"
        await asyncio.sleep(0.01)
