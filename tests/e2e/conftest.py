"""The whole platform as separate processes on free ports, for end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cic_devstack.stack import Stack
from tests.support.platform import running_platform


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, redis_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Scheduler, billing, orchestrator and gateway as real processes, with two simulated nodes."""
    name = f"e2e/{request.node.name}"
    async with running_platform(database_url, redis_url, redis_prefix, name) as running:
        yield running
