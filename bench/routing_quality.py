"""Routing quality: four simulated nodes of different speeds behind a real ``cic-scheduler``, the
same Poisson request sequence replayed once per routing policy (the scheduler restarted between
them), each request doing what the gateway does: pick, the chat completion on the chosen node,
release.

    .venv/bin/python bench/routing_quality.py [--duration 30] [--load 0.4] [--seed 1]

It prints p50/p90/p99/max request latency per policy (from the request's arrival to its answer,
so queueing on a busy node counts) and how each policy spread the requests over the nodes; then
least-loaded's p99 as a ratio of round-robin's against the target (<= 0.5), and one JSON line.
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import psutil
import uvloop
from cpu import CpuMeter
from loadgen import PhaseResult
from report import MAX_OTHER_CORES, percentile
from scheduler_harness import (
    process_of,
    redis_processes,
    redis_server,
    scheduler,
    simulator,
    unique_prefix,
)

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_gateway.scheduler_client import SchedulerClient

MODEL = "cic-bench-routing"
POLICIES = ("least_loaded", "round_robin")
TARGET_RATIO = 0.5
# max_tokens of the requests and how often each comes: many short answers, a few long ones.
MAX_TOKENS = (16, 32, 64, 128, 256)
MAX_TOKENS_WEIGHTS = (0.35, 0.30, 0.20, 0.10, 0.05)
REQUEST_TIMEOUT_S = 300.0
JSON = {"Content-Type": "application/json"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=30.0, help="seconds of arrivals per policy (30)")
    add("--load", type=float, default=0.4, help="arrival rate as a share of cluster capacity")
    add("--rate", type=float, default=None, help="arrival rate in requests/s (overrides --load)")
    add("--seed", type=int, default=1, help="seed of the request sequence (default 1)")
    add("--itl-ms", default="2,4,8,16", help="time between tokens of each node (ms)")
    add("--ttft-ms", type=float, default=20.0, help="time to first token of every node (ms)")
    add("--max-num-seqs", type=int, default=4, help="requests each node runs at once")
    add("--policies", default=",".join(POLICIES), help="comma-separated routing policies")
    add("--log-dir", type=Path, default=None, help="keep the processes' logs in this folder")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Arrival:
    at_s: float
    max_tokens: int


def capacity(itl_ms: Sequence[float], ttft_ms: float, max_num_seqs: int) -> float:
    """Requests per second the nodes finish together when kept full with the mix of max_tokens."""
    mean_tokens = sum(t * w for t, w in zip(MAX_TOKENS, MAX_TOKENS_WEIGHTS, strict=True))
    return sum(max_num_seqs * 1000 / (ttft_ms + itl * (mean_tokens - 1)) for itl in itl_ms)


def arrivals(rate: float, duration_s: float, seed: int) -> list[Arrival]:
    """A Poisson process of ``rate`` for ``duration_s``, each request with its max_tokens."""
    rng = random.Random(seed)
    out, at = [], rng.expovariate(rate)
    while at < duration_s:
        out.append(Arrival(at, rng.choices(MAX_TOKENS, MAX_TOKENS_WEIGHTS)[0]))
        at += rng.expovariate(rate)
    return out


@dataclass
class PolicyRun(PhaseResult):
    by_node: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0


class Replayer:
    """Sends each arrival on time and does what the gateway does with it."""

    def __init__(self, client: SchedulerClient, session: aiohttp.ClientSession) -> None:
        self._client = client
        self._session = session
        self.out = PolicyRun()

    async def _request(self, index: int, arrival: Arrival, arrived: float) -> None:
        try:
            lease = await self._client.pick(MODEL)
        except Exception as err:  # the gateway's client raises its API errors
            self.out.fail(f"pick: {err!r}")
            return
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Tell story number {index}."}],
            "max_tokens": arrival.max_tokens,
        }
        outcome, usage = pb.OUTCOME_NODE_ERROR, {}
        try:
            async with self._session.post(
                f"{lease.endpoint}/v1/chat/completions", data=orjson.dumps(body), headers=JSON
            ) as resp:
                answer = await resp.read()
            if resp.status == 200:
                outcome, usage = pb.OUTCOME_SUCCESS, orjson.loads(answer)["usage"]
                self.out.latencies.append(time.perf_counter() - arrived)
                self.out.by_node[lease.node_id] += 1
            else:
                self.out.fail(f"HTTP {resp.status} from {lease.node_id}: {answer[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as err:
            self.out.fail(f"{lease.node_id}: {err!r}")
        finally:
            self._client.release_soon(
                lease, outcome, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            )

    async def replay(self, sequence: list[Arrival]) -> PolicyRun:
        start = time.perf_counter()
        tasks = []
        for index, arrival in enumerate(sequence):
            delay = start + arrival.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            arrived = start + arrival.at_s
            tasks.append(asyncio.create_task(self._request(index, arrival, arrived)))
        await asyncio.gather(*tasks)
        await self._client.drain(10.0)
        self.out.wall_s = time.perf_counter() - start
        return self.out


async def _register(stub: pb_grpc.SchedulerServiceStub, endpoints: list[str]) -> None:
    for i, endpoint in enumerate(endpoints):
        await stub.RegisterNode(
            pb.RegisterNodeRequest(id=f"node-{i}", model=MODEL, endpoint=endpoint), timeout=5
        )


async def _run_policy(
    policy: str,
    redis_url: str,
    endpoints: list[str],
    sequence: list[Arrival],
    meter_base: dict[str, psutil.Process],
    log_dir: Path,
) -> dict[str, Any]:
    settings = {"ROUTING_POLICY": policy}
    async with scheduler(redis_url, unique_prefix("routing"), log_dir, settings) as (addr, proc):
        meter = CpuMeter({**meter_base, "scheduler": process_of(proc)})
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            await _register(stub, endpoints)
            client = SchedulerClient(stub)
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                meter.start()
                run = await Replayer(client, session).replay(sequence)
                cores = meter.stop()
    return _summary(run, cores, len(endpoints))


def _summary(run: PolicyRun, cores: dict[str, float], nodes: int) -> dict[str, Any]:
    values = sorted(run.latencies)

    def ms(share: float) -> float:
        return round(percentile(values, share) * 1000, 1)

    return {
        "requests": len(values),
        "errors": run.errors,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
        "wall_s": round(run.wall_s, 1),
        "by_node": [run.by_node.get(f"node-{i}", 0) for i in range(nodes)],
        "cores": cores,
        "error_samples": run.error_samples,
    }


def _line(policy: str, s: dict[str, Any], itl: list[float]) -> str:
    spread = " ".join(f"{ms:g}ms:{n}" for ms, n in zip(itl, s["by_node"], strict=True))
    text = (
        f"{policy:13} n={s['requests']:<5} err={s['errors']} p50={s['p50_ms']:8.1f}"
        f" p90={s['p90_ms']:8.1f} p99={s['p99_ms']:8.1f} max={s['max_ms']:8.1f} ms"
        f"  (all answered after {s['wall_s']} s)\n              requests per node by ITL: {spread}"
        f"\n              cpu (cores): "
        + " ".join(f"{name}={cores:.2f}" for name, cores in s["cores"].items())
    )
    for sample in s["error_samples"]:
        text += f"\n              error: {sample}"
    return text


def _report(results: dict[str, Any], args: argparse.Namespace, rate: float, cap: float) -> int:
    line: dict[str, Any] = {
        "benchmark": "routing_quality",
        "cpus": len(os.sched_getaffinity(0)),
        "seed": args.seed,
        "rate": round(rate, 2),
        "capacity": round(cap, 2),
        "duration_s": args.duration,
        "itl_ms": args.itl,
        "ttft_ms": args.ttft_ms,
        "max_num_seqs": args.max_num_seqs,
        "policies": {
            p: {k: v for k, v in r.items() if k != "error_samples"} for p, r in results.items()
        },
    }
    if all(p in results for p in POLICIES) and results["round_robin"]["p99_ms"]:
        ratio = results["least_loaded"]["p99_ms"] / results["round_robin"]["p99_ms"]
        line["p99_ratio"] = round(ratio, 3)
        line["target_met"] = ratio <= TARGET_RATIO
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(f"\nleast_loaded p99 / round_robin p99 = {ratio:.3f} [{verdict} <= {TARGET_RATIO}]")
    other = max(r["cores"].get("other", 0.0) for r in results.values())
    if other > MAX_OTHER_CORES:
        print(f"WARNING: other work took up to {other:.2f} cores during the run (less reliable).")
    failed = sum(r["errors"] for r in results.values())
    print(f"failed requests: {failed}")
    print(orjson.dumps(line).decode())
    return 1 if failed else 0


async def main(args: argparse.Namespace) -> int:
    args.itl = [float(v) for v in args.itl_ms.split(",")]
    cap = capacity(args.itl, args.ttft_ms, args.max_num_seqs)
    rate = args.rate or args.load * cap
    sequence = arrivals(rate, args.duration, args.seed)
    print(
        f"{len(sequence)} requests at {rate:.1f}/s for {args.duration:g} s"
        f" (cluster capacity about {cap:.1f}/s; nodes with ITL {args.itl_ms} ms,"
        f" TTFT {args.ttft_ms:g} ms, max-num-seqs {args.max_num_seqs}; seed {args.seed})",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="cic-bench-") as scratch:
        log_dir = args.log_dir or Path(scratch) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with redis_server(Path(scratch)) as redis_url:
            async with contextlib.AsyncExitStack() as stack:
                endpoints, meter_base = [], {"loadgen": psutil.Process(), **redis_processes()}
                for i, itl in enumerate(args.itl):
                    node_args = ["--itl-ms", f"{itl:g}", "--ttft-ms", f"{args.ttft_ms:g}"]
                    node_args += ["--max-num-seqs", str(args.max_num_seqs)]
                    endpoint, node = await stack.enter_async_context(
                        simulator(f"node-{i}", MODEL, node_args, log_dir)
                    )
                    endpoints.append(endpoint)
                    meter_base[f"node{i}"] = process_of(node)
                for policy in args.policies.split(","):
                    results[policy] = await _run_policy(
                        policy, redis_url, endpoints, sequence, meter_base, log_dir
                    )
                    print(_line(policy, results[policy], args.itl), flush=True)
    return _report(results, args, rate, cap)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
