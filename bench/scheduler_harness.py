"""What the scheduler benchmarks share: a Redis, a real ``cic-scheduler`` process on its own key
prefix (deleted after), simulated vLLM nodes as processes, and the processes to meter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import aiohttp
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic_common.redis import create_redis
from cic_devstack.processes import ServiceProcess
from cic_devstack.stores import embedded_redis

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _python_path() -> dict[str, str]:
    """``PYTHONPATH`` passed on, so that a run may point the scheduler at other sources."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """The tests' Redis (``CIC_TEST_REDIS_URL``), else an embedded one in ``folder``."""
    url = os.environ.get("CIC_TEST_REDIS_URL")
    if url:
        yield url
        return
    with embedded_redis(folder / "redis") as embedded:
        yield embedded


def redis_processes() -> dict[str, psutil.Process]:
    """Every ``redis-server`` of this machine (the scheduler's registry lives in one of them)."""
    found: dict[str, psutil.Process] = {}
    for process in psutil.process_iter(["name"]):
        if "redis-server" in (process.info["name"] or ""):
            found[f"redis{len(found) or ''}"] = process
    return found


async def delete_prefix(redis_url: str, prefix: str) -> int:
    """Deletes every key under ``prefix``; returns how many there were."""
    client = create_redis(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


def unique_prefix(name: str) -> str:
    return f"cic-bench-{name}-{secrets.token_hex(4)}:"


async def _wait_grpc_serving(proc: ServiceProcess, addr: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited during start-up (log: {proc.log_file})")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not serving on {addr} after {START_TIMEOUT_S:.0f} s")


async def _wait_http_ok(proc: ServiceProcess, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited during start-up (log: {proc.log_file})")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not answering {url} after {START_TIMEOUT_S:.0f} s")


@contextlib.asynccontextmanager
async def _running(proc: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    """Starts ``proc``; stops it (SIGTERM, then SIGKILL) on the way out, and says so if it
    did not exit cleanly."""
    try:
        await proc.start()
        yield proc
    finally:
        code = await proc.stop(grace=10)
        if code not in (0, None):
            print(f"WARNING: {proc.name} exited with {code} (log: {proc.log_file})", flush=True)


@contextlib.asynccontextmanager
async def scheduler(
    redis_url: str, prefix: str, log_dir: Path, settings: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, ServiceProcess]]:
    """A ``cic-scheduler`` process on free ports, its registry under ``prefix`` in Redis;
    yields its gRPC address. Its keys are deleted after it stops."""
    grpc_port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HOME": str(log_dir),
        **_python_path(),
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(free_port()),
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        **(settings or {}),
    }
    proc = ServiceProcess("scheduler", [_bin("cic-scheduler")], env, log_dir / "scheduler.log")
    addr = f"127.0.0.1:{grpc_port}"
    try:
        async with _running(proc):
            await _wait_grpc_serving(proc, addr)
            yield addr, proc
    finally:
        await delete_prefix(redis_url, prefix)


@contextlib.asynccontextmanager
async def simulator(
    name: str, model: str, args: Sequence[str], log_dir: Path
) -> AsyncIterator[tuple[str, ServiceProcess]]:
    """A ``cic-vllm-sim`` process on a free port; yields its endpoint once ``/health`` answers."""
    port = free_port()
    argv = [_bin("cic-vllm-sim"), "--port", str(port), "--model", model, *args]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(log_dir)}
    proc = ServiceProcess(name, argv, env, log_dir / f"{name}.log")
    endpoint = f"http://127.0.0.1:{port}"
    async with _running(proc):
        await _wait_http_ok(proc, f"{endpoint}/health")
        yield endpoint, proc


def process_of(proc: ServiceProcess) -> psutil.Process:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid)


@contextlib.asynccontextmanager
async def node_mirror(
    metrics_from: str, log_dir: Path
) -> AsyncIterator[tuple[str, ServiceProcess]]:
    """``node_mirror.py`` on a free port serving the page at ``metrics_from``; yields its
    endpoint once ``/health`` answers."""
    port = free_port()
    script = str(Path(__file__).with_name("node_mirror.py"))
    argv = [sys.executable, script, "--port", str(port), "--metrics-from", metrics_from]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(log_dir), **_python_path()}
    proc = ServiceProcess("mirror", argv, env, log_dir / "mirror.log")
    endpoint = f"http://127.0.0.1:{port}"
    async with _running(proc):
        await _wait_http_ok(proc, f"{endpoint}/health")
        yield endpoint, proc
