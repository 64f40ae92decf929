"""Scrapes and probes in a process of their own (SIGNALS_PROCESS, the default outside these
tests): the child does the work, the scheduler shows its counters, restarts it when it dies and
stops it when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import psutil
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_common.settings import parse_settings
from cic_scheduler import signals
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.signals import start_child
from tests.support.net import free_port
from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import RunningScheduler, eventually

PAGE = (
    'vllm:num_requests_running{model_name="m"} 3\n'
    'vllm:num_requests_waiting{model_name="m"} 1\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
)
FAST = {
    "SIGNALS_PROCESS": "true",
    "LOAD_SCRAPE_INTERVAL_S": "0.1",
    "HEALTH_PROBE_INTERVAL_S": "0.1",
    "BREAKER_FAILURES": "2",
}


class FakeNode:
    """``/metrics`` and ``/health`` of a vLLM node, each counting its calls; health switchable."""

    def __init__(self) -> None:
        self.health_status = 200
        self.calls = {"/metrics": 0, "/health": 0}
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.calls["/metrics"] += 1
        return web.Response(text=PAGE)

    async def _health(self, request: web.Request) -> web.Response:
        self.calls["/health"] += 1
        return web.Response(status=self.health_status)

    async def __aenter__(self) -> FakeNode:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _load(scheduler: RunningScheduler) -> tuple[float, float, float] | None:
    node = (await scheduler.nodes())["n1"]
    if not node.HasField("load"):
        return None
    return (node.load.running, node.load.waiting, node.load.kv_cache_usage)


def _child(scheduler: RunningScheduler) -> psutil.Process:
    process = scheduler.service.signals_process
    assert process is not None and process.pid is not None
    child = psutil.Process(process.pid)
    assert child.ppid() == os.getpid()
    return child


async def test_the_child_scrapes_and_probes_and_the_scheduler_counts_what_it_reports(
    start_scheduler: StartScheduler,
) -> None:
    async with FakeNode() as node:
        scheduler = await start_scheduler(**FAST)
        await scheduler.register("n1", endpoint=node.endpoint)
        assert await eventually(lambda: _load(scheduler), bool) == (3, 1, 0.5)
        child = _child(scheduler)
        assert "cic_scheduler.signals" in " ".join(child.cmdline())
        assert node.calls["/health"] > 0

        async def collector() -> float:
            return scheduler.sample("cic_scheduler_signals_collector")

        assert await eventually(collector, lambda held: held == 1) == 1

        node.health_status = 503  # probes fail: the breaker opens, the failures reach us

        async def probe_failures() -> float:
            return scheduler.sample("cic_scheduler_probe_failures_total")

        await eventually(probe_failures, lambda count: count >= 2)
        unhealthy = await eventually(scheduler.nodes, lambda nodes: not nodes["n1"].healthy)
        assert unhealthy["n1"].breaker == pb.BREAKER_STATE_OPEN

        # The node gauges come from the nodes the child read after its probe round.
        async def breaker_gauge() -> float | None:
            return scheduler.metrics.get_sample_value(
                "cic_scheduler_node_breaker_state", {"node_id": "n1", "model": "m"}
            )

        assert await eventually(breaker_gauge, lambda value: value == 1) == 1
        assert scheduler.sample("cic_scheduler_nodes", state="ready", healthy="false") == 1


async def test_a_child_that_dies_is_started_again(start_scheduler: StartScheduler) -> None:
    async with FakeNode() as node:
        scheduler = await start_scheduler(**FAST)
        await scheduler.register("n1", endpoint=node.endpoint)
        await eventually(lambda: _load(scheduler), bool)
        first = _child(scheduler)
        first.kill()
        first.wait(5)
        process = scheduler.service.signals_process
        assert process is not None

        async def restarted() -> int | None:
            return process.pid

        pid = await eventually(restarted, lambda pid: pid is not None and pid != first.pid)
        assert pid is not None and process.starts == 2
        scrapes = node.calls["/metrics"]

        async def scraped() -> int:
            return node.calls["/metrics"]

        await eventually(scraped, lambda count: count > scrapes)  # by the new child


async def test_a_new_child_takes_the_collector_role_on_at_once_after_one_was_killed(
    start_scheduler: StartScheduler,
) -> None:
    """A killed child cannot give the role up. Its successor holds it under the same holder id,
    so it takes over at its first round, not when the dead one's key lapses (here after about
    27 s: the scrape timeout makes the collector key's TTL long)."""
    scheduler = await start_scheduler(**FAST, LOAD_SCRAPE_TIMEOUT_S="9")
    process = scheduler.service.signals_process
    assert process is not None

    async def collector() -> float:
        return scheduler.sample("cic_scheduler_signals_collector")

    await eventually(collector, lambda held: held == 1)
    first = _child(scheduler)
    first.kill()
    first.wait(5)

    async def successor() -> int | None:
        return process.pid if process.starts == 2 else None

    await eventually(successor, lambda pid: pid is not None)
    # Well within the dead child's key TTL (eventually gives up after 10 s).
    await eventually(collector, lambda held: held == 1)


async def test_the_child_stops_with_the_scheduler(start_scheduler: StartScheduler) -> None:
    scheduler = await start_scheduler(**FAST)
    process = scheduler.service.signals_process
    assert process is not None

    async def pid() -> int | None:
        return process.pid

    child = psutil.Process(await eventually(pid, lambda pid: pid is not None))
    await scheduler.service.stop(0)
    assert not child.is_running()
    assert process.pid is None
    assert scheduler.sample("cic_scheduler_signals_collector") == 0


async def test_the_child_ends_when_its_scheduler_is_gone(redis_url: str, redis_prefix: str) -> None:
    """However the scheduler went (killed, crashed), its end of the child's standard input
    closes: the child gives up the collector role and exits."""
    settings = parse_settings(
        SchedulerSettings,
        {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix, **FAST},
    )
    read_fd, write_fd = os.pipe()
    child = await start_child(write_fd, "holder-of-this-test")
    os.close(write_fd)
    assert child.stdin is not None
    child.stdin.write(settings.model_dump_json().encode() + b"\n")
    try:
        with os.fdopen(read_fd, "rb") as reports:

            async def collecting() -> None:  # the only replica: it takes the collector role
                while json.loads(await asyncio.to_thread(reports.readline))["collector"] != 1:
                    pass

            await asyncio.wait_for(collecting(), 30)
            child.stdin.close()
            assert await asyncio.wait_for(child.wait(), 30) == 0
            last = json.loads((await asyncio.to_thread(reports.read)).splitlines()[-1])
        assert last["collector"] == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_child_that_keeps_dying_is_started_again_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def dies_at_once(report_fd: int, holder: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", "pass", stdin=asyncio.subprocess.PIPE, pass_fds=(report_fd,)
        )

    pauses: list[float] = []
    enough = asyncio.Event()

    async def record(delay: float) -> None:
        pauses.append(delay)
        if len(pauses) == 7:
            enough.set()
        await asyncio.sleep(0)

    monkeypatch.setattr(signals, "start_child", dies_at_once)
    monkeypatch.setattr(signals, "_pause", record)
    settings = parse_settings(SchedulerSettings, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    process = signals.SignalsProcess(settings, SchedulerMetrics(CollectorRegistry()))
    process.start()
    try:
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        await process.stop()
    assert pauses[:7] == [1, 2, 4, 8, 16, 30, 30]
