"""The nodes' load scrapes and health probes, in a process of their own beside the scheduler.

Each scrape or probe is an HTTP call, a parse and a Redis script: a few hundred microseconds of
an event loop, about a hundred times a second with 64 nodes. On the loop that answers picks they
hold picks up: at 1,000 picks/s on 2 cores (bench/scheduler_pick.py) the pick p99 was
2.2-2.7 ms in runs with them there and 1.6-2.4 ms in runs with them stopped (above that only in
runs where the machine stalled). So (with ``SIGNALS_PROCESS``, the default) the scheduler starts
``python -m cic_scheduler.signals`` and hands it its settings on the child's standard input.
The child scrapes and probes the nodes (while its replica holds the collector role, see
:mod:`cic_scheduler.leadership`) with the same code the scheduler would run in-process, and
reports its counters once a second on a pipe of their own (its standard output is the
scheduler's, for its logs), and the nodes it read for the node gauges after each probe round;
the scheduler adds them to its own metrics (it does not list the nodes itself for them).

A child that dies is started again after ``RESTART_DELAY_S``, twice as long after each child
that ends within ``RESTART_DELAY_MAX_S`` of its start (up to that), so one that cannot start
does not fill the logs. Every child of a scheduler holds the collector role under that
scheduler's one holder id, so a child started after one died (killed, without giving the role
up) takes the role on at its first round rather than after the dead one's lapses
(``signals_collector_ttl_s``): the load samples do not go stale meanwhile. The child stops on
SIGTERM, and when its standard input ends: the scheduler is gone, however it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from typing import IO, Any

import aiohttp
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic_common.logging import configure_logging
from cic_common.periodic import cancel_and_wait
from cic_common.redis import create_redis
from cic_common.runtime import run, stop_event_on_signals
from cic_scheduler.background import PeriodicTask
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.health import HealthProber
from cic_scheduler.leadership import SignalsLeadership
from cic_scheduler.load import LoadScraper
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.nodes import BreakerState, NodeState, NodeStatus, NodeView
from cic_scheduler.registry import NodeRegistry
from cic_scheduler.registry_redis import RedisNodeRegistry
from cic_scheduler.watch import NodeChanges

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STOP_TIMEOUT_S = 5.0
# The share of its interval over which a scrape or probe round spreads its nodes' starts.
SPREAD_SHARE = 0.8
# The child's counters the scheduler adds to its own, by metric name.
_COUNTERS = {
    "load_scrape_failures": "cic_scheduler_load_scrape_failures_total",
    "probe_failures": "cic_scheduler_probe_failures_total",
}
_COLLECTOR = "cic_scheduler_signals_collector"


class Signals:
    """The scrape and probe rounds of one scheduler replica, run as periodic tasks on the
    ``registry`` and ``redis`` given (the caller's to close)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
        registry: NodeRegistry,
        redis: Redis,
        holder: str | None = None,
    ) -> None:
        prefix = f"{settings.redis_key_prefix}scheduler:"
        ttl_s = settings.signals_collector_ttl_s
        self.leadership = SignalsLeadership(redis, prefix, ttl_s, holder)
        self._session = aiohttp.ClientSession(headers={"User-Agent": "cic-scheduler"})
        changes = NodeChanges(redis, prefix)
        probe_timeout = settings.health_probe_timeout_s
        self.prober = HealthProber(
            registry, self._session, probe_timeout, metrics, self.leadership, changes
        )
        scrape_timeout = settings.load_scrape_timeout_s
        self.scraper = LoadScraper(
            registry, self._session, scrape_timeout, metrics, self.leadership
        )
        # Each round's nodes start spread over most of its interval.
        scrape_every = settings.load_scrape_interval_s
        probe_every = settings.health_probe_interval_s
        self._tasks = [
            PeriodicTask(
                "load-scraper",
                scrape_every,
                functools.partial(self.scraper.scrape_all, scrape_every * SPREAD_SHARE),
            ),
            PeriodicTask(
                "health-prober",
                probe_every,
                functools.partial(self.prober.probe_all, probe_every * SPREAD_SHARE),
            ),
        ]

    def start(self) -> None:
        for task in self._tasks:
            task.start()

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
        await self.leadership.give_up()
        await self._session.close()


def redis_registry(settings: SchedulerSettings, redis: Redis) -> RedisNodeRegistry:
    """The node registry in ``redis`` as ``settings`` describe it."""
    return RedisNodeRegistry(
        redis,
        settings.redis_key_prefix,
        lease_ttl_s=settings.lease_ttl_s,
        breaker_failures=settings.breaker_failures,
        breaker_open_s=settings.breaker_open_s,
    )


async def start_child(report_fd: int, holder: str) -> asyncio.subprocess.Process:
    """``python -m cic_scheduler.signals``, reporting on ``report_fd`` (which it inherits) and
    holding the collector role as ``holder``, its standard input a pipe: write the settings'
    JSON on one line, close it to stop the child."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cic_scheduler.signals",
        str(report_fd),
        holder,
        stdin=asyncio.subprocess.PIPE,
        pass_fds=(report_fd,),
    )


_pause = asyncio.sleep  # (tests record the pauses between children)


class SignalsProcess:
    """Runs the signals child of this scheduler, starts it again when it dies, and adds what it
    reports to this process's metrics."""

    def __init__(self, settings: SchedulerSettings, metrics: SchedulerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0  # children started so far
        # The collector role's holder id of every child of this scheduler (see the module).
        self.holder = uuid.uuid4().hex

    @property
    def pid(self) -> int | None:
        """The running child's process id (None while none runs)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._supervise(), name="signals-process")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_S
        while not self._stopping:
            started = loop.time()
            try:
                await self._run_child()
            except OSError as err:  # could not even start it
                log.error("cannot start the signals process: %s", err)
            if self._stopping:
                return
            if loop.time() - started >= RESTART_DELAY_MAX_S:
                delay = RESTART_DELAY_S  # it had been running well
            log.warning("the signals process ended; starting it again in %.0f s", delay)
            await _pause(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    async def _run_child(self) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            process = await start_child(write_fd, self.holder)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._process = process
        self.starts += 1
        reports = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reports), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            assert process.stdin is not None
            process.stdin.write(self._settings.model_dump_json().encode() + b"\n")
            seen: dict[str, float] = {}  # this child's totals so far
            async for line in reports:
                self._apply(line, seen)
        finally:
            transport.close()
            # Nobody collects here until the next child says it does.
            self._metrics.signals_collector.set(0)
        await process.wait()

    def _apply(self, line: bytes, seen: dict[str, float]) -> None:
        try:
            report = json.loads(line)
            totals = {name: float(report[name]) for name in _COUNTERS}
            collector = float(report["collector"])
            nodes = [
                NodeStatus(str(i), str(m), NodeState(s), int(f), BreakerState(b))
                for i, m, s, f, b in report.get("nodes") or ()
            ]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable report from the signals process: %r", line[:200])
            return
        if "nodes" in report:
            self._metrics.refresh_nodes(nodes)
        for name, total in totals.items():
            added = total - seen.get(name, 0.0)
            if added > 0:
                getattr(self._metrics, name).inc(added)
            seen[name] = total
        self._metrics.signals_collector.set(collector)

    async def stop(self) -> None:
        """Stops the child (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``) and waits for it."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._metrics.signals_collector.set(0)


class _ChildMetrics(SchedulerMetrics):
    """The child's metrics: the nodes of each gauge refresh are kept for the next report."""

    listed: list[list[Any]] | None = None

    def refresh_nodes(self, nodes: Iterable[NodeView | NodeStatus]) -> None:
        listed = list(nodes)
        super().refresh_nodes(listed)
        self.listed = [[n.id, n.model, n.state.value, n.in_flight, n.breaker.value] for n in listed]


def _report(metrics: _ChildMetrics, registry: CollectorRegistry, out: IO[str]) -> None:
    report: dict[str, Any] = {
        name: registry.get_sample_value(metric) or 0.0 for name, metric in _COUNTERS.items()
    }
    report["collector"] = registry.get_sample_value(_COLLECTOR) or 0.0
    if metrics.listed is not None:
        report["nodes"], metrics.listed = metrics.listed, None
    out.write(json.dumps(report) + "\n")
    out.flush()


async def _until_closed(stream: IO[str]) -> None:
    """Returns when ``stream`` (a pipe) reaches its end: the scheduler that started us is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    while await reader.read(65536):
        pass


async def _serve(settings: SchedulerSettings, out: IO[str], holder: str | None) -> None:
    stop = stop_event_on_signals()
    registry = CollectorRegistry()
    metrics = _ChildMetrics(registry)
    redis = create_redis(settings.redis_url)
    nodes = redis_registry(settings, redis)
    signals = Signals(settings, metrics, nodes, redis, holder)
    watch_parent = asyncio.create_task(_until_closed(sys.stdin))
    watch_parent.add_done_callback(lambda _: stop.set())
    signals.start()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_INTERVAL_S)
            try:
                _report(metrics, registry, out)
            except OSError:  # the scheduler is gone
                stop.set()
    finally:
        await cancel_and_wait(watch_parent)
        await signals.stop()
        await nodes.aclose()
        await redis.aclose()
        metrics.signals_collector.set(0)  # given up
        with contextlib.suppress(OSError):
            _report(metrics, registry, out)


def main() -> None:
    """The child's life: its settings from the first line of standard input, then the rounds
    until SIGTERM or the end of standard input; reports go to the file descriptor named by its
    first argument, and it holds the collector role as the holder id of its second (if any)."""
    out = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    holder = sys.argv[2] if len(sys.argv) > 2 else None
    settings = SchedulerSettings.model_validate_json(sys.stdin.readline())
    configure_logging(settings.log_level, settings.log_format, "scheduler-signals")
    run(lambda: _serve(settings, out, holder))


if __name__ == "__main__":
    main()
