"""Active ``/health`` probes feed each node's circuit breaker, once across all replicas."""

from __future__ import annotations

import asyncio

from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import FakeNodeHealth, RunningScheduler, eventually

FAST_PROBES = {"HEALTH_PROBE_INTERVAL_S": "0.02", "BREAKER_FAILURES": "3"}


async def _calls(node: FakeNodeHealth, more_than: int) -> None:
    async def calls() -> int:
        return node.calls

    await eventually(calls, lambda count: count > more_than)


async def test_failed_probes_open_the_breaker_and_successes_do_not_close_it_while_open(
    start_scheduler: StartScheduler, node_health: FakeNodeHealth
) -> None:
    scheduler = await start_scheduler(**FAST_PROBES, BREAKER_OPEN_S="3600")
    await scheduler.register("n", endpoint=node_health.endpoint)
    node_health.status = 500
    await eventually(scheduler.nodes, lambda nodes: not nodes["n"].healthy)
    assert scheduler.sample("cic_scheduler_probe_failures_total") >= 3

    node_health.status = 200
    await _calls(node_health, node_health.calls + 5)
    assert not (await scheduler.nodes())["n"].healthy, "open until its open time is over"


async def test_a_successful_probe_closes_a_half_open_breaker(
    start_scheduler: StartScheduler, node_health: FakeNodeHealth
) -> None:
    scheduler = await start_scheduler(**FAST_PROBES, BREAKER_OPEN_S="0")
    await scheduler.register("n", endpoint=node_health.endpoint)
    node_health.status = 500
    await eventually(scheduler.nodes, lambda nodes: not nodes["n"].healthy)
    node_health.status = 200
    await eventually(scheduler.nodes, lambda nodes: nodes["n"].healthy)
    assert (await scheduler.pick()).node.id == "n"


async def test_only_one_replica_probes_so_failures_count_once(
    start_scheduler: StartScheduler, node_health: FakeNodeHealth
) -> None:
    replicas = [await start_scheduler(**FAST_PROBES, BREAKER_OPEN_S="3600") for _ in range(3)]
    await replicas[0].register("n", endpoint=node_health.endpoint)
    node_health.status = 500
    await eventually(replicas[1].nodes, lambda nodes: not nodes["n"].healthy)

    def failures(replica: RunningScheduler) -> float:
        return replica.sample("cic_scheduler_probe_failures_total")

    collectors = [r for r in replicas if r.sample("cic_scheduler_signals_collector") == 1]
    assert len(collectors) == 1
    assert [failures(r) for r in replicas if r is not collectors[0]] == [0, 0]
    assert failures(collectors[0]) >= 3


async def test_a_round_spreads_its_probes_over_the_interval(
    start_scheduler: StartScheduler, node_health: FakeNodeHealth
) -> None:
    """Probes of a round start one step apart rather than all at once, so a round over many
    nodes does not stall the event loop that serves picks."""
    scheduler = await start_scheduler(HEALTH_PROBE_INTERVAL_S="3600")
    for n in range(4):
        await scheduler.register(f"n{n}", endpoint=node_health.endpoint)
    started = asyncio.get_running_loop().time()
    await scheduler.service.signals.prober.probe_all(spread_s=0.4)
    assert len(node_health.arrivals) == 4
    # The n-th probe starts n steps (0.1 s) after the round: never sooner (a busy machine can
    # only make it later), so each arrival is bounded below by its step.
    offsets = sorted(t - started for t in node_health.arrivals)
    assert all(offset >= 0.095 * n for n, offset in enumerate(offsets)), offsets
    assert offsets[-1] >= 0.3
