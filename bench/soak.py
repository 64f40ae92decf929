"""A bounded soak: mixed streamed and non-streamed chats from many tenants through two gateway
replicas (real ``cic-gateway`` x2, ``cic-scheduler``, ``cic-billing``, ``cic-orchestrator``,
simulated nodes), for minutes, then the ledger checked against what the clients were told.

    .venv/bin/python bench/soak.py [--duration 120] [--tenants 20] [--concurrency 24]

It prints throughput, latency percentiles (whole request; first token for streams), errors by
status, and the tokens the clients were told (each response's ``usage``) against the tokens the
ledger holds for the same tenants once billing has caught up. The bar: no 5xx and an exact
ledger (every successful request once, to the token). Exits 1 when either fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import uvloop
from report import percentile
from stores import free_port, fresh_database, stack_config, stores

from cic_devstack.admin import AdminClient
from cic_devstack.stack import Stack

MODEL = "cic-sim-small"
PROMPTS = [
    "Summarise the plot of a film you like.",
    "Explain least-loaded routing to a new engineer.",
    "Write a haiku about GPUs.",
    "List three uses of a usage ledger.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=120.0, help="seconds of traffic (default 120)")
    add("--tenants", type=int, default=20, help="tenants, one key each (default 20)")
    add("--concurrency", type=int, default=24, help="requests in flight (default 24)")
    add("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    add("--itl-ms", type=float, default=3.0, help="simulated time between tokens (default 3)")
    add("--stream-share", type=float, default=0.5, help="share of streamed requests (0.5)")
    add("--seed", type=int, default=7)
    add("--log-dir", type=Path, default=None, help="keep the services' logs in this folder")
    return parser.parse_args(argv)


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"unary": [], "stream": []})
    first_token: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    told: dict[str, list[int]] = field(default_factory=dict)  # tenant -> [requests, tokens]
    samples: list[str] = field(default_factory=list)

    def told_to(self, tenant: str, tokens: int) -> None:
        entry = self.told.setdefault(tenant, [0, 0])
        entry[0] += 1
        entry[1] += tokens

    def failed(self, what: str, sample: str) -> None:
        self.statuses[what] += 1
        if len(self.samples) < 5:
            self.samples.append(sample[:300])


@dataclass(frozen=True)
class Client:
    tenant: str
    key: str


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    client: Client,
    rng: random.Random,
    args: argparse.Namespace,
    tally: Tally,
) -> None:
    stream = rng.random() < args.stream_share
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(1, 48),
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {client.key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        async with session.post(
            f"{url}/v1/chat/completions", data=orjson.dumps(body), headers=headers
        ) as resp:
            if resp.status != 200:
                tally.failed(str(resp.status), (await resp.read()).decode("utf-8", "replace"))
                return
            if not stream:
                usage = orjson.loads(await resp.read())["usage"]
            else:
                usage, first_seen = None, False
                async for line in resp.content:
                    if not line.startswith(b"data: {"):
                        continue
                    event = orjson.loads(line[6:])
                    if not first_seen and event.get("choices"):
                        first_seen = True
                        tally.first_token.append(time.perf_counter() - started)
                    if event.get("usage"):
                        usage = event["usage"]
                if usage is None:
                    tally.failed("no usage", "stream ended without a usage chunk")
                    return
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as err:
        tally.failed(type(err).__name__, repr(err))
        return
    tally.latencies["stream" if stream else "unary"].append(time.perf_counter() - started)
    tally.statuses["200"] += 1
    tally.told_to(client.tenant, usage["prompt_tokens"] + usage["completion_tokens"])


async def _drive(
    urls: list[str], clients: list[Client], args: argparse.Namespace
) -> tuple[Tally, float]:
    tally = Tally()
    rng = random.Random(args.seed)
    stop_at = time.monotonic() + args.duration
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(n: int) -> None:
            i = n
            while time.monotonic() < stop_at:
                i += 1
                await _one(session, urls[i % len(urls)], rng.choice(clients), rng, args, tally)

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(args.concurrency)))
        elapsed = time.monotonic() - started
    return tally, elapsed


async def _ledger(database_url: str, tally: Tally, wait_s: float = 60.0) -> dict[str, list[int]]:
    """Per tenant [rows, tokens] in the ledger, once it holds as many rows as were answered."""
    expected = sum(r for r, _ in tally.told.values())
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            rows = await conn.fetch(
                "SELECT tenant_id::text AS tenant, count(*) AS n,"
                " sum(prompt_tokens + completion_tokens) AS tokens"
                " FROM billing.usage_events GROUP BY tenant_id"
            )
            found = {r["tenant"]: [int(r["n"]), int(r["tokens"])] for r in rows}
            if sum(n for n, _ in found.values()) >= expected or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _platform(
    database_url: str, redis_url: str, log_dir: Path, args: argparse.Namespace
) -> AsyncIterator[tuple[Stack, list[str]]]:
    config = stack_config(
        database_url,
        redis_url,
        log_dir,
        env={"REDIS_KEY_PREFIX": f"cic-soak-{secrets.token_hex(4)}:"},
        node_model=MODEL,
        node_count=args.nodes,
        node_args=("--itl-ms", str(args.itl_ms)),
    )
    stack = Stack(config)
    await stack.start()
    try:
        port_b = free_port()
        await stack.start_gateway_replica("gateway-b", port_b, free_port())
        yield stack, [stack.gateway_url, f"http://{config.host}:{port_b}"]
    finally:
        codes = await stack.stop()
        if any(code != 0 for code in codes.values()):
            print(f"WARNING: services did not exit cleanly: {codes} (logs in {log_dir})")


async def _clients(stack: Stack, count: int) -> list[Client]:
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.gateway_url, stack.config.admin_token)
        clients = []
        for n in range(count):
            tenant = await admin.create_tenant(
                f"Soak {n}", f"soak-{n}-{secrets.token_hex(3)}@example.com"
            )
            clients.append(
                Client(tenant["id"], (await admin.create_key(tenant["id"], "soak"))["key"])
            )
    return clients


def _ms(values: list[float], share: float) -> str:
    return f"{percentile(sorted(values), share) * 1000:8.1f}" if values else "       -"


def _report(tally: Tally, elapsed: float, ledger: dict[str, list[int]]) -> int:
    ok = tally.statuses["200"]
    errors = {k: v for k, v in tally.statuses.items() if k != "200"}
    five_xx = sum(v for k, v in errors.items() if k.isdigit() and int(k) >= 500)
    print(f"\nrequests: {ok + sum(errors.values())} in {elapsed:.1f} s, {ok / elapsed:.1f} ok/s")
    for mode, values in tally.latencies.items():
        print(
            f"  {mode:7} n={len(values):<7} p50={_ms(values, 0.5)} p90={_ms(values, 0.9)}"
            f" p99={_ms(values, 0.99)} max={_ms(values, 1.0)} ms"
        )
    ft = tally.first_token
    print(f"  first token (streams) p50={_ms(ft, 0.5)} p99={_ms(ft, 0.99)} ms")
    print(f"errors: {errors or 'none'} (5xx: {five_xx})")
    for sample in tally.samples:
        print(f"  e.g. {sample}")
    told_rows = sum(r for r, _ in tally.told.values())
    told_tokens = sum(t for _, t in tally.told.values())
    ledger_rows = sum(ledger.get(t, [0, 0])[0] for t in tally.told)
    ledger_tokens = sum(ledger.get(t, [0, 0])[1] for t in tally.told)
    exact = all(ledger.get(t) == v for t, v in tally.told.items())
    print(
        f"ledger: {ledger_rows} rows / {ledger_tokens} tokens; clients were told"
        f" {told_rows} / {told_tokens}: {'EXACT' if exact else 'MISMATCH'}"
        f" ({len(tally.told)} tenants)"
    )
    passed = five_xx == 0 and exact and ok > 0
    print(f"bar (no 5xx, exact ledger): {'met' if passed else 'MISSED'}")
    print(
        orjson.dumps(
            {
                "benchmark": "soak",
                "elapsed_s": round(elapsed, 1),
                "ok": ok,
                "ok_per_s": round(ok / elapsed, 1),
                "errors": errors,
                "p99_ms": {
                    m: round(percentile(sorted(v), 0.99) * 1000, 1)
                    for m, v in tally.latencies.items()
                    if v
                },
                "told_tokens": told_tokens,
                "ledger_tokens": ledger_tokens,
                "exact": exact,
            }
        ).decode()
    )
    return 0 if passed else 1


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cic-soak-") as scratch:
        log_dir = args.log_dir or Path(scratch) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with stores(Path(scratch)) as (pg_server, redis_url):
            async with (
                fresh_database(pg_server) as database_url,
                _platform(database_url, redis_url, log_dir, args) as (stack, urls),
            ):
                clients = await _clients(stack, args.tenants)
                print(
                    f"platform up: {args.nodes} nodes, gateways {', '.join(urls)};"
                    f" {args.tenants} tenants, {args.concurrency} in flight"
                    f" for {args.duration:.0f} s",
                    flush=True,
                )
                tally, elapsed = await _drive(urls, clients, args)
                ledger = await _ledger(database_url, tally)
    return _report(tally, elapsed, ledger)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
