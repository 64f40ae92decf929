"""Real ``cic-gateway`` processes for the tests that need more than one replica."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.net import free_port


async def start_gateway(env: dict[str, str], log: Path) -> tuple[str, asyncio.subprocess.Process]:
    """Starts ``python -m cic_gateway`` with ``env`` on free ports; returns its URL and process."""
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


async def wait_alive(
    session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
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


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def gateway_replicas(
    env: dict[str, str], folder: Path, count: int = 2
) -> AsyncIterator[list[str]]:
    """``count`` gateways sharing ``env`` (logs in ``folder``), answering; their URLs. Each must
    exit 0 on SIGTERM at the end."""
    started = [await start_gateway(env, folder / f"gateway-{i}.log") for i in range(count)]
    try:
        async with aiohttp.ClientSession() as session:
            for url, proc in started:
                await wait_alive(session, url, proc)
        yield [url for url, _ in started]
    finally:
        for _, proc in started:
            await stop_gateway(proc)
    assert [proc.returncode for _, proc in started] == [0] * count
