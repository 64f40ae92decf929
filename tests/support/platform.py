"""The whole platform as real processes on free ports, for end-to-end and reliability tests."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from cic_devstack.stack import Ports, Stack, StackConfig
from tests.support.net import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_ports() -> Ports:
    return Ports(*(free_port() for _ in range(len(dataclasses.fields(Ports)))))


@contextlib.asynccontextmanager
async def running_platform(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    name: str,
    env: Mapping[str, str] | None = None,
    **config: Any,
) -> AsyncIterator[Stack]:
    """Scheduler, billing, orchestrator and gateway as real processes, with simulated nodes
    (``StackConfig`` fields override the defaults, ``env`` adds settings for every service),
    their Redis keys under ``redis_prefix``; logs under test-artifacts/<name>/. Every service
    must exit cleanly at the end."""
    log_dir = ARTIFACTS / name
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    settings: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "admin_token": secrets.token_urlsafe(32),
        "bin_dir": Path(sys.executable).parent,
        "ports": free_ports(),
        "log_dir": log_dir,
        "log_format": "json",
        "base_env": {
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(log_dir),
            "REDIS_KEY_PREFIX": redis_prefix,
            **(env or {}),
        },
        **config,
    }
    stack = Stack(StackConfig(**settings))
    await stack.start()
    try:
        yield stack
    finally:
        codes = await stack.stop()
        assert all(code in (0, None) for code in codes.values()), (
            f"services did not exit cleanly: {codes} (logs in {log_dir})"
        )
