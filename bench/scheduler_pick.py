"""Pick + release over gRPC against a real ``cic-scheduler`` process with many registered nodes,
at a fixed rate (open loop: sends go out on a clock, never waiting for earlier replies).

    .venv/bin/python bench/scheduler_pick.py [--rate 1000] [--duration 10] [--nodes 64]

The nodes are registered through RegisterNode and all point at one real simulated node, so the
scheduler's health probes and load scrapes (at their default intervals) succeed and run during
the benchmark as they would in production. After an ``idle`` phase (CPU only) come up to three
phases: ``health`` (the gRPC health check at the same rate: the floor of any RPC of this
server), ``release`` (each pick followed by one ReleaseNode call) and ``releases`` (leases given
back in ReleaseNodes batches the way the gateway does: one call under way at a time, every
release made meanwhile in the next) and ``route`` (the gateway's own scheduler client: picks
and releases over one ``Route`` stream, picks that meet batched). It prints, per phase, pick
latency p50/p90/p99/max, the achieved rate, errors, leases left behind, how late the clock
sent, and the CPU of the scheduler, Redis, the node and the load generator; then the verdict
against the target (p99 <= 2 ms at 1,000 picks/s) and one JSON line. Exits 1 if any pick or
release failed or a lease was left behind.
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
import gc
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import psutil
import uvloop
from cpu import CpuMeter, signals_of
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loadgen import PhaseResult
from report import MAX_OTHER_CORES, percentile
from scheduler_harness import (
    node_mirror,
    process_of,
    redis_processes,
    redis_server,
    scheduler,
    simulator,
    unique_prefix,
)

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_gateway.errors import ApiError
from cic_gateway.scheduler_client import SchedulerClient

MODEL = "cic-bench-pick"
TARGET_RATE = 1000.0
TARGET_P99_MS = 2.0
RPC_TIMEOUT_S = 5.0
TICK_S = 0.0005
# The event loop's clock ticks in milliseconds (uvloop): a shorter asyncio sleep returns at once,
# and a loop that sleeps less than this spins a core away from the processes it measures.
ASYNC_TICK_S = 0.001
SERVICE_NAME = "cic.scheduler.v1.SchedulerService"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rate", type=float, default=TARGET_RATE, help="picks per second (default 1000)")
    add("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase")
    add("--nodes", type=int, default=64, help="nodes registered (default 64)")
    add(
        "--nodes-at",
        choices=("mirror", "sim"),
        default="mirror",
        help="what the registered nodes point at: a mirror of the simulator's /metrics and /health"
        " (default; costs next to nothing, as 64 nodes on their own machines would cost this"
        " one) or the simulator itself",
    )
    add(
        "--modes",
        default="health,release,releases,route",
        help="comma-separated: release, releases, route, health",
    )
    add("--idle", type=float, default=3.0, help="seconds metered with no picks first (default 3)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a scheduler setting, e.g. --set LOAD_SCRAPE_INTERVAL_S=5 (repeatable)",
    )
    add("--log-dir", type=Path, default=None, help="keep the processes' logs in this folder")
    return parser.parse_args(argv)


@dataclass
class PickPhase(PhaseResult):
    """Pick latencies and send lateness (seconds) of the picks due after the warm-up."""

    release_latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    sent: int = 0


def _rpc_error(error: BaseException | None) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


class ReleaseBatcher:
    """Leases given back the way the gateway's scheduler client does it: one ReleaseNodes call
    at a time; what is released while a call is under way leaves with the next one."""

    def __init__(self, stub: pb_grpc.SchedulerServiceStub, out: PickPhase) -> None:
        self._stub = stub
        self._out = out
        self._lock = threading.Lock()
        self._pending: list[pb.ReleaseNodeRequest] = []
        self._sending = False
        self.calls = 0
        self.idle = threading.Event()
        self.idle.set()

    def release(self, request: pb.ReleaseNodeRequest) -> None:
        with self._lock:
            self._pending.append(request)
            if self._sending:
                return
            self._sending = True
            self.idle.clear()
        self._send_next()

    def _send_next(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                self._sending = False
                self.idle.set()
                return
            self.calls += 1
        call = self._stub.ReleaseNodes.future(
            pb.ReleaseNodesRequest(releases=batch), timeout=RPC_TIMEOUT_S
        )
        call.add_done_callback(self._sent)

    def _sent(self, call: grpc.Future) -> None:
        if call.exception() is not None:
            self._out.fail(f"ReleaseNodes: {_rpc_error(call.exception())}")
        self._send_next()


class PickDriver:
    """One phase: a pick due every ``1/rate`` s, each followed by the release of its lease.

    It uses gRPC's synchronous stubs with futures: sends go out from one thread on the clock,
    replies are handled in gRPC's own threads. That costs the load generator less than half the
    CPU of ``grpc.aio`` for the same calls, CPU the scheduler needs on a small machine."""

    def __init__(self, channel: grpc.Channel, mode: str) -> None:
        self._stub = pb_grpc.SchedulerServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel) if mode == "health" else None
        self.out = PickPhase()
        self._batcher = ReleaseBatcher(self._stub, self.out) if mode == "releases" else None
        self._measure_from = 0.0
        self._open = threading.Semaphore(0)
        self._lock = threading.Lock()

    @property
    def release_calls(self) -> int:
        """Release RPCs sent: one per lease, or the ReleaseNodes batches."""
        if self._health is not None:
            return 0
        return self._batcher.calls if self._batcher is not None else self.out.sent

    def _picked(self, call: grpc.Future, due: float, started: float) -> None:
        picked = time.perf_counter()
        error = call.exception()
        if error is not None:
            with self._lock:
                self.out.fail(f"PickNode: {_rpc_error(error)}")
            self._open.release()
            return
        reply = call.result()
        if due >= self._measure_from:
            with self._lock:
                self.out.latencies.append(picked - started)
                self.out.lateness.append(started - due)
        if self._health is not None:
            self._open.release()
            return
        release = pb.ReleaseNodeRequest(
            lease_id=reply.lease_id,
            outcome=pb.OUTCOME_SUCCESS,
            prompt_tokens=12,
            completion_tokens=16,
        )
        if self._batcher is not None:
            self._batcher.release(release)
            self._open.release()
            return
        done = self._stub.ReleaseNode.future(release, timeout=RPC_TIMEOUT_S)
        done.add_done_callback(lambda call: self._released(call, due, picked))

    def _released(self, call: grpc.Future, due: float, picked: float) -> None:
        released = time.perf_counter()
        with self._lock:
            if call.exception() is not None:
                self.out.fail(f"ReleaseNode: {_rpc_error(call.exception())}")
            elif due >= self._measure_from:
                self.out.release_latencies.append(released - picked)
        self._open.release()

    def _send(self) -> grpc.Future:
        if self._health is not None:
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            return self._health.Check.future(request, timeout=RPC_TIMEOUT_S)
        return self._stub.PickNode.future(pb.PickNodeRequest(model=MODEL), timeout=RPC_TIMEOUT_S)

    def run(self, rate: float, warmup_s: float, duration_s: float) -> PickPhase:
        """Sends on the clock for warm-up + duration; then waits for every reply."""
        interval = 1.0 / rate
        start = time.perf_counter()
        self._measure_from = start + warmup_s
        stop_at = self._measure_from + duration_s
        sent = 0
        while (now := time.perf_counter()) < stop_at:
            while (due := start + sent * interval) <= now and due < stop_at:
                started = time.perf_counter()
                call = self._send()
                call.add_done_callback(lambda c, d=due, s=started: self._picked(c, d, s))
                sent += 1
            time.sleep(TICK_S)
        self.out.window_s = duration_s
        self.out.sent = sent
        for _ in range(sent):
            if not self._open.acquire(timeout=RPC_TIMEOUT_S * 2):
                self.out.fail("no answer within the RPC timeout")
                break
        if self._batcher is not None and not self._batcher.idle.wait(RPC_TIMEOUT_S * 2):
            self.out.fail("releases still under way after the RPC timeout")
        return self.out


class RouteDriver:
    """The ``route`` phase: the gateway's scheduler client (``grpc.aio``, one ``Route`` stream),
    a pick due every ``1/rate`` s as its own task, its lease given back as soon as it arrives."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.SchedulerServiceStub(channel)
        self._client = SchedulerClient(stub, pick_timeout_s=RPC_TIMEOUT_S)
        self.out = PickPhase()
        self.release_calls = 0

    async def _one(self, due: float, measure_from: float) -> None:
        started = time.perf_counter()
        try:
            lease = await self._client.pick(MODEL)
        except ApiError as err:
            self.out.fail(f"pick: {err.status} {err.message}")
            return
        if due >= measure_from:
            self.out.latencies.append(time.perf_counter() - started)
            self.out.lateness.append(started - due)
        self._client.release_soon(lease, pb.OUTCOME_SUCCESS, 12, 16)

    async def run(self, rate: float, warmup_s: float, duration_s: float) -> PickPhase:
        interval = 1.0 / rate
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s
        tasks: set[asyncio.Task[None]] = set()
        sent = 0
        while (now := time.perf_counter()) < stop_at:
            while (due := start + sent * interval) <= now and due < stop_at:
                task = asyncio.create_task(self._one(due, measure_from))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(ASYNC_TICK_S)
        self.out.window_s = duration_s
        self.out.sent = sent
        if tasks:
            await asyncio.wait(tasks, timeout=RPC_TIMEOUT_S * 2)
        await self._client.drain(RPC_TIMEOUT_S)
        return self.out


async def _register(stub: pb_grpc.SchedulerServiceStub, endpoint: str, count: int) -> None:
    """``count`` nodes of MODEL, all pointing at the one simulated node (each is probed)."""
    labels = {"cloud": "local", "region": "bench", "accelerator": "SIM"}
    for i in range(count):
        await stub.RegisterNode(
            pb.RegisterNodeRequest(
                id=f"bench-node-{i:03d}", model=MODEL, endpoint=endpoint, labels=labels
            ),
            timeout=RPC_TIMEOUT_S,
        )


async def _leases_left(stub: pb_grpc.SchedulerServiceStub) -> int:
    reply = await stub.ListNodes(pb.ListNodesRequest(model=MODEL), timeout=RPC_TIMEOUT_S)
    return sum(node.in_flight for node in reply.nodes)


def _ms(values: list[float], share: float) -> float:
    return round(percentile(values, share) * 1000, 3)


def _summary(phase: PickPhase, cores: dict[str, float], leases_left: int) -> dict[str, Any]:
    values, late = sorted(phase.latencies), sorted(phase.lateness)
    releases = sorted(phase.release_latencies)
    return {
        "picks": len(values),
        "sent": phase.sent,
        "errors": phase.errors,
        "leases_left": leases_left,
        "rate": round(len(values) / phase.window_s, 1) if phase.window_s else 0.0,
        "p50_ms": _ms(values, 0.50),
        "p90_ms": _ms(values, 0.90),
        "p99_ms": _ms(values, 0.99),
        "max_ms": _ms(values, 1.0),
        "release_p50_ms": _ms(releases, 0.50) if releases else None,
        "release_p99_ms": _ms(releases, 0.99) if releases else None,
        "late_p99_ms": _ms(late, 0.99),
        "late_max_ms": _ms(late, 1.0),
        "cores": cores,
        "error_samples": phase.error_samples,
    }


def _cores_text(cores: dict[str, float], rate: float = 0.0) -> str:
    return " ".join(
        f"{name}={used:.2f}" + (f"/{used * 1e6 / rate:.0f}us" if rate and name != "other" else "")
        for name, used in cores.items()
    )


def _line(mode: str, s: dict[str, Any]) -> str:
    text = (
        f"{mode:8} n={s['picks']:<6} err={s['errors']} left={s['leases_left']}"
        f" {s['rate']:7.1f} picks/s  p50={s['p50_ms']:.3f} p90={s['p90_ms']:.3f}"
        f" p99={s['p99_ms']:.3f} max={s['max_ms']:.3f} ms"
        f"  (sent late p99 {s['late_p99_ms']:.3f} max {s['late_max_ms']:.3f} ms)"
    )
    if s["release_p50_ms"] is not None:
        text += f"\n         release p50={s['release_p50_ms']:.3f} p99={s['release_p99_ms']:.3f} ms"
    elif mode == "releases":
        calls, sent = s["release_calls"], s["sent"]
        text += f"\n         {calls} ReleaseNodes calls for {sent} leases (warm-up included)"
    text += f"\n         cpu (cores/per call): {_cores_text(s['cores'], s['rate'])}"
    for sample in s["error_samples"]:
        text += f"\n         error: {sample}"
    return text


async def _measure(addr: str, meter: CpuMeter, args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, dict[str, Any]] = {}
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        sync_channel = grpc.insecure_channel(addr)
        await _register(stub, args.endpoint, args.nodes)
        meter.start()
        await asyncio.sleep(args.idle)
        phases["idle"] = {"cores": meter.stop()}
        print("idle     cpu (cores): " + _cores_text(phases["idle"]["cores"]), flush=True)
        for mode in args.modes.split(","):
            driver: PickDriver | RouteDriver
            driver = RouteDriver(channel) if mode == "route" else PickDriver(sync_channel, mode)
            leases_before = await _leases_left(stub)
            gc.collect()
            gc.disable()
            meter.start()
            try:
                if isinstance(driver, RouteDriver):
                    phase = await driver.run(args.rate, args.warmup, args.duration)
                else:
                    phase = await asyncio.to_thread(
                        driver.run, args.rate, args.warmup, args.duration
                    )
            finally:
                gc.enable()
            cores = meter.stop()
            left = await _leases_left(stub) - leases_before
            phases[mode] = _summary(phase, cores, left)
            phases[mode]["release_calls"] = driver.release_calls
            print(_line(mode, phases[mode]), flush=True)
        sync_channel.close()
    return phases


def _report(phases: dict[str, Any], args: argparse.Namespace) -> int:
    other = max(p["cores"].get("other", 0.0) for p in phases.values())
    if other > MAX_OTHER_CORES:
        print(f"WARNING: other work took up to {other:.2f} cores during the run: unreliable.")
    loaded = [p for mode, p in phases.items() if mode in ("release", "releases", "route")]
    worst = max(p["p99_ms"] for p in loaded)
    slowest = min(p["rate"] for p in loaded)
    met = worst <= TARGET_P99_MS and slowest >= TARGET_RATE * 0.99
    failed = sum(p["errors"] + p["leases_left"] for p in loaded)
    print(
        f"\ntarget: p99 <= {TARGET_P99_MS} ms at {TARGET_RATE:.0f} picks/s with {args.nodes} nodes:"
        f" {'ok' if met else 'MISSED'} (worst p99 {worst:.3f} ms, lowest rate {slowest:.1f}/s)"
    )
    print(f"failed picks/releases or leases left: {failed}")
    line = {
        "benchmark": "scheduler_pick",
        "cpus": len(os.sched_getaffinity(0)),
        "nodes": args.nodes,
        "rate_target": args.rate,
        "duration_s": args.duration,
        "settings": args.set,
        "target_met": met,
        "phases": {
            mode: {k: v for k, v in p.items() if k != "error_samples"} for mode, p in phases.items()
        },
    }
    print(orjson.dumps(line).decode())
    return 1 if failed else 0


def _settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair}: expected NAME=VALUE")
        settings[name.upper()] = value
    return settings


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cic-bench-") as scratch:
        log_dir = args.log_dir or Path(scratch) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with redis_server(Path(scratch)) as redis_url:
            async with contextlib.AsyncExitStack() as stack:
                args.endpoint, node = await stack.enter_async_context(
                    simulator("node", MODEL, (), log_dir)
                )
                if args.nodes_at == "mirror":
                    args.endpoint, node = await stack.enter_async_context(
                        node_mirror(f"{args.endpoint}/metrics", log_dir)
                    )
                addr, sched = await stack.enter_async_context(
                    scheduler(redis_url, unique_prefix("pick"), log_dir, _settings(args.set))
                )
                print(f"scheduler {addr}, {args.nodes} nodes -> {args.endpoint}", flush=True)
                processes = {"loadgen": psutil.Process(), "scheduler": process_of(sched)}
                processes |= signals_of(processes["scheduler"])
                processes |= {"node": process_of(node), **redis_processes()}
                phases = await _measure(addr, CpuMeter(processes), args)
    return _report(phases, args)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
