"""The whole platform as separate processes on free ports, for end-to-end tests."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cic_devstack.stack import Ports, Stack, StackConfig
from tests.support.net import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_ports() -> Ports:
    return Ports(*(free_port() for _ in range(8)))


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Scheduler, billing, orchestrator and gateway as real processes, with two simulated nodes."""
    log_dir = ARTIFACTS / "e2e" / request.node.name
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    config = StackConfig(
        database_url=database_url,
        redis_url=redis_url,
        admin_token=secrets.token_urlsafe(32),
        bin_dir=Path(sys.executable).parent,
        ports=free_ports(),
        log_dir=log_dir,
        log_format="json",
        base_env={"PATH": str(Path(sys.executable).parent), "HOME": str(log_dir)},
    )
    running = Stack(config)
    await running.start()
    try:
        yield running
    finally:
        codes = await running.stop()
        assert all(code == 0 for code in codes.values()), (
            f"services did not exit cleanly: {codes} (logs in {log_dir})"
        )
