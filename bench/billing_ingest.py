"""Usage events per second into billing's ledger through gRPC (issue 5: target >= 20,000/s).

One run starts a real ``cic-billing`` process on a fresh database, then, for each phase, sends
``RecordUsage`` batches of ``--batch`` events (the gateway's default: 500) from ``--concurrency``
callers in a closed loop for ``--duration`` seconds after a ``--warmup``:

- ``direct``: the baseline, measured in the same run: the same rows written by this process
  straight into Postgres with the ledger's own INSERT statement (no gRPC, no checks, no prices);
- ``grpc``: the same work through billing over gRPC: every event checked, priced and written
  once (unique on request id).

Every event has its own request id; requests are built and serialized before a phase starts, so
the load generator costs little. Prints events per second, batch latency and the CPU each
process used, the gRPC figure as a ratio to the baseline, and one JSON line.

    .venv/bin/python bench/billing_ingest.py                 # about 40 seconds
    .venv/bin/python bench/billing_ingest.py --duration 10 --concurrency 8 --batch 1000
"""

from __future__ import annotations

# The load generator stands in for the gateway: its gRPC does its I/O as the gateway's does
# (cic_common.grpc_io), which must be settled before gRPC is imported.
from cic_common.grpc_io import use_polling_io

use_polling_io()
# isort: split

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import orjson
import psutil
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from report import percentile
from scheduler_harness import free_port, process_of

from cic.billing.v1 import billing_pb2
from cic_devstack.processes import ServiceProcess
from cic_devstack.stores import embedded_postgres

TARGET_EVENTS_PER_S = 20_000
RECORD_USAGE = "/cic.billing.v1.BillingService/RecordUsage"
INSERT = """
INSERT INTO billing.usage_events (
    request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
    cost_micro_usd, started_at, finished_at, streamed, status_code)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::boolean[], $12::integer[])
ON CONFLICT (request_id) DO NOTHING
"""


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--pool", type=int, default=10, help="billing's DB_POOL_MAX")
    parser.add_argument("--log-dir", type=Path, default=None)
    return parser.parse_args()


# Postgres: the tests' server (a fresh database, dropped after), else an embedded one.


@contextlib.asynccontextmanager
async def fresh_database(folder: Path) -> AsyncIterator[str]:
    server = os.environ.get("CIC_TEST_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if not server:
            server = stack.enter_context(embedded_postgres(folder / "pg"))
        name = f"cic_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(server)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            conn = await asyncpg.connect(server)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


@contextlib.asynccontextmanager
async def billing(
    database_url: str, log_dir: Path, pool: int
) -> AsyncIterator[tuple[str, ServiceProcess]]:
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HOME": str(log_dir),
        "DATABASE_URL": database_url,
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "DB_POOL_MAX": str(pool),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    argv = [str(Path(sys.executable).parent / "cic-billing")]
    proc = ServiceProcess("billing", argv, env, log_dir / "billing.log")
    addr = f"127.0.0.1:{port}"
    await proc.start()
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                if not proc.running or time.monotonic() > deadline:
                    raise RuntimeError(f"billing did not start (log: {proc.log_file})")
                await asyncio.sleep(0.05)
        yield addr, proc
    finally:
        code = await proc.stop(grace=10)
        if code not in (0, None):
            print(f"WARNING: billing exited with {code} (log: {proc.log_file})", flush=True)


# The events.


class Events:
    """Unique usage events, made in batches on demand."""

    def __init__(self, batch: int, tenants: int) -> None:
        self.batch = batch
        self.tenants = tenants
        self._run = secrets.token_hex(4)
        self._next = 0
        self._finished = datetime.now(UTC)

    def _ids(self) -> list[int]:
        start, self._next = self._next, self._next + self.batch
        return list(range(start, self._next))

    def request(self) -> bytes:
        finished, started = Timestamp(), Timestamp()
        finished.FromDatetime(self._finished)
        started.FromDatetime(self._finished - timedelta(seconds=1))
        events = [
            billing_pb2.UsageEvent(
                request_id=f"req_{self._run}_{i}",
                tenant_id=f"ten_{i % self.tenants}",
                api_key_id=f"key_{i % self.tenants}",
                model="cic-sim-small",
                node_id="node-1",
                prompt_tokens=100 + i % 900,
                completion_tokens=20 + i % 300,
                started_at=started,
                finished_at=finished,
                streamed=bool(i % 2),
                status_code=200,
            )
            for i in self._ids()
        ]
        return billing_pb2.RecordUsageRequest(events=events).SerializeToString()

    def rows(self) -> list[list[object]]:
        ids = self._ids()
        n = len(ids)
        started = self._finished - timedelta(seconds=1)
        return [
            [f"req_{self._run}_{i}" for i in ids],
            [f"ten_{i % self.tenants}" for i in ids],
            [f"key_{i % self.tenants}" for i in ids],
            ["cic-sim-small"] * n,
            ["node-1"] * n,
            [100 + i % 900 for i in ids],
            [20 + i % 300 for i in ids],
            [
                ((100 + i % 900) * 100_000 + (20 + i % 300) * 200_000 + 500_000) // 1_000_000
                for i in ids
            ],
            [started] * n,
            [self._finished] * n,
            [bool(i % 2) for i in ids],
            [200] * n,
        ]


# Phases.


def postgres_processes() -> dict[str, psutil.Process]:
    found = {}
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith("postgres"):
            found[f"pg{process.pid}"] = process
    return found


def cpu_times(processes: dict[str, psutil.Process]) -> dict[str, float]:
    used = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[name] = times.user + times.system
    return used


async def phase(
    name: str,
    send: Callable[[object], Awaitable[int]],
    make: Callable[[], object],
    args: argparse.Namespace,
    meter: dict[str, psutil.Process],
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` callers, each sending a prepared batch after the last."""
    expected = int(TARGET_EVENTS_PER_S * 4 * (args.duration + args.warmup) / args.batch) + 8
    prepared = [make() for _ in range(expected)]
    latencies: list[float] = []
    written = 0
    counting = False
    stop_at = time.perf_counter() + args.warmup + args.duration

    async def caller() -> None:
        nonlocal written
        while prepared and time.perf_counter() < stop_at:
            request = prepared.pop()
            began = time.perf_counter()
            count = await send(request)
            if counting:
                latencies.append(time.perf_counter() - began)
                written += count

    tasks = [asyncio.create_task(caller()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    counting, started = True, time.perf_counter()
    processes = {**meter, **postgres_processes()}
    before = cpu_times(processes)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    after = cpu_times(processes)
    cores: dict[str, float] = {}
    for key in after.keys() & before.keys():
        group = "postgres" if key.startswith("pg") else key
        cores[group] = round(cores.get(group, 0.0) + (after[key] - before[key]) / wall, 2)
    if not prepared:
        print(f"WARNING: {name} ran out of prepared batches", flush=True)
    values = sorted(latencies)
    return {
        "events": written,
        "events_per_s": round(written / wall),
        "batches": len(values),
        "batch_p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "batch_p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "cores": cores,
    }


def _line(name: str, figures: dict[str, Any]) -> str:
    cores = " ".join(f"{k}={v:.2f}" for k, v in sorted(figures["cores"].items()))
    return (
        f"{name:>7}: {figures['events_per_s']:>8,} events/s  ({figures['events']:,} events in"
        f" {figures['batches']} batches; batch p50 {figures['batch_p50_ms']} ms,"
        f" p99 {figures['batch_p99_ms']} ms)  cpu {cores}"
    )


async def main() -> int:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="cic-bench-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        async with (
            fresh_database(Path(tmp)) as database_url,
            billing(database_url, log_dir, args.pool) as (addr, proc),
        ):
            meter = {"loadgen": psutil.Process(os.getpid()), "billing": process_of(proc)}
            events = Events(args.batch, args.tenants)

            pool = await asyncpg.create_pool(database_url, min_size=args.pool, max_size=args.pool)

            async def direct(rows: object) -> int:
                await pool.execute(INSERT, *rows)  # type: ignore[misc]
                return args.batch

            async with grpc.aio.insecure_channel(addr) as channel:
                record = channel.unary_unary(
                    RECORD_USAGE,
                    request_serializer=lambda raw: raw,
                    response_deserializer=billing_pb2.RecordUsageResponse.FromString,
                )

                async def through_grpc(raw: object) -> int:
                    reply = await record(raw, timeout=30)
                    return int(reply.recorded)

                baseline = await phase("direct", direct, events.rows, args, meter)
                measured = await phase("grpc", through_grpc, events.request, args, meter)
            async with pool.acquire() as conn:
                rows = await conn.fetchval("SELECT count(*) FROM billing.usage_events")
            await pool.close()

    print(
        f"billing ingest: batch {args.batch}, concurrency {args.concurrency}, {args.tenants}"
        f" tenants, {args.duration:.0f} s per phase after {args.warmup:.0f} s of warm-up"
    )
    print(_line("direct", baseline))
    print(_line("grpc", measured))
    ratio = measured["events_per_s"] / max(1, baseline["events_per_s"])
    verdict = "meets" if measured["events_per_s"] >= TARGET_EVENTS_PER_S else "BELOW"
    print(
        f"through gRPC: {measured['events_per_s']:,} events/s = {ratio:.0%} of writing straight"
        f" to Postgres; {verdict} the target of {TARGET_EVENTS_PER_S:,}/s."
        f" Ledger rows after the run: {rows:,}."
    )
    print(
        orjson.dumps(
            {"direct": baseline, "grpc": measured, "ratio": round(ratio, 3), "ledger_rows": rows}
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
