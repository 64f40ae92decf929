"""What the gateway adds to a request: the same load straight to a zero-latency simulated node
and through the whole platform (real ``cic-gateway``, ``cic-scheduler``, ``cic-billing`` and
``cic-orchestrator`` processes, Postgres and Redis), in one run.

    .venv/bin/python bench/gateway_overhead.py [--duration 5] [--concurrency 32] [--pin]

For non-streamed and streamed chat completions it prints, for each target, the request count,
errors, p50/p90/p99 latency and throughput at concurrency 1 and at ``--concurrency``; then the
latency the gateway adds at concurrency 1 and its throughput as a share of the direct one, against
the targets; and last, all figures as one JSON line. Exits 1 if any request failed.

Postgres and Redis are found as the tests find them: ``CIC_TEST_DATABASE_URL`` (a server on which
a fresh database is made for the run and dropped after) and ``CIC_TEST_REDIS_URL``, else embedded
servers in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop
from cpu import CpuMeter, platform_processes
from loadgen import PhaseResult, build_request, run_phase
from report import Figures, print_report
from stores import fresh_database, stack_config, stores

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack

MODEL = "cic-sim-small"
SIM_ARGS = ("--ttft-ms", "0", "--itl-ms", "0")
# Requests and tokens per minute of the bench key: never reached, but checked on every request.
UNREACHED_LIMIT = 1_000_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="measured seconds per phase (default 5)")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    add("--concurrency", type=int, default=32, help="connections of the throughput phase")
    add("--max-tokens", type=int, default=16, help="max_tokens of every request (default 16)")
    add("--modes", default="unary,stream", help="comma-separated: unary, stream")
    add(
        "--no-rate-limits",
        dest="rate_limits",
        action="store_false",
        help="a key without limits (by default the key has requests and tokens per minute limits"
        " too high ever to refuse, so every request runs the limiter's scripts as a tenant's does)",
    )
    add("--pin", action="store_true", help="load generator on CPU 0, the servers on the rest")
    add("--log-dir", type=Path, default=None, help="keep the services' logs in this folder")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    key: str


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (an affinity is per thread on Linux)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.asynccontextmanager
async def _platform(
    database_url: str, redis_url: str, log_dir: Path, pin: bool
) -> AsyncIterator[Stack]:
    config = stack_config(
        database_url, redis_url, log_dir, node_model=MODEL, node_count=1, node_args=SIM_ARGS
    )
    cpus = sorted(os.sched_getaffinity(0))
    if pin and len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    if pin:
        _pin(os.getpid(), set(cpus[1:]))  # the processes started now inherit the servers' CPUs
    stack = Stack(config)
    await stack.start()
    if pin:
        _pin(os.getpid(), {cpus[0]})
    try:
        yield stack
    finally:
        codes = await stack.stop()
        if any(code != 0 for code in codes.values()):
            print(f"WARNING: services did not exit cleanly: {codes} (logs in {log_dir})")


async def _targets(stack: Stack, rate_limits: bool) -> tuple[Target, Target]:
    """The node itself and the gateway, with a key made through the admin API."""
    limits = {"rpm_limit": UNREACHED_LIMIT, "tpm_limit": UNREACHED_LIMIT} if rate_limits else {}
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        tenant = await admin.create_tenant("bench", f"bench-{secrets.token_hex(4)}@example.com")
        key = (await admin.create_key(tenant["id"], "bench", **limits))["key"]
        nodes = await admin.list_nodes()
    node = urlsplit(nodes[0]["endpoint"])
    gateway = urlsplit(stack.gateway_url)
    assert node.hostname and node.port and gateway.hostname and gateway.port
    return (
        Target("direct", node.hostname, node.port, key),
        Target("gateway", gateway.hostname, gateway.port, key),
    )


def _request(target: Target, stream: bool, max_tokens: int) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    return build_request(
        target.host, target.port, "/v1/chat/completions", orjson.dumps(body), headers
    )


async def _measure(
    stack: Stack, targets: tuple[Target, Target], args: argparse.Namespace
) -> Figures:
    figures = Figures(concurrency=args.concurrency, max_tokens=args.max_tokens)
    meter = CpuMeter(platform_processes(stack))
    for mode in args.modes.split(","):
        stream = mode == "stream"
        for concurrency in (1, args.concurrency):
            for target in targets:
                meter.start()
                result: PhaseResult = await run_phase(
                    target.host,
                    target.port,
                    _request(target, stream, args.max_tokens),
                    stream=stream,
                    concurrency=concurrency,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                )
                figures.add(mode, target.name, concurrency, result, meter.stop())
                print(figures.line(mode, target.name, concurrency), flush=True)
    return figures


async def main(args: argparse.Namespace) -> int:
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="cic-bench-") as scratch:
        log_dir = args.log_dir or Path(scratch) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for old in log_dir.glob("*.log"):
            old.unlink()
        with stores(Path(scratch)) as (pg_server, redis_url):
            async with (
                fresh_database(pg_server) as database_url,
                _platform(database_url, redis_url, log_dir, args.pin) as stack,
            ):
                direct, gateway = await _targets(stack, args.rate_limits)
                limits = "limits checked" if args.rate_limits else "no limits"
                print(
                    f"platform up; node {direct.host}:{direct.port}, gateway {stack.gateway_url};"
                    f" key with {limits}"
                )
                figures = await _measure(stack, (direct, gateway), args)
    return print_report(figures, pinned=args.pin, cpus=cpus)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
