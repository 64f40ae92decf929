"""Simulated nodes built through `create_app`, served by aiohttp's test server on a real port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cic_vllm_sim.app import create_app
from cic_vllm_sim.config import SimConfig
from tests.unit.vllm_sim.helpers import MODEL, SimFactory


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulated nodes with `SimConfig` overrides; all are closed after the test."""
    clients: list[TestClient] = []

    async def start(**overrides: Any) -> TestClient:
        client = TestClient(TestServer(create_app(SimConfig(model=MODEL, **overrides))))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def sim(make_sim: SimFactory) -> TestClient:
    return await make_sim()
