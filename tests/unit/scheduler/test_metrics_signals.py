"""The scheduler's own metrics, read from its Prometheus registry: pick latency, picks by policy
and outcome, per-node in-flight and breaker state, scrape failures and the collector role."""

from __future__ import annotations

import grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import RunningScheduler, eventually, rpc_error


async def test_picks_are_counted_by_model_policy_and_outcome_and_timed(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(ROUTING_POLICY_BY_MODEL="rr=round_robin")
    await scheduler.register("a", model="rr")
    await scheduler.register("b", model="ll")
    await scheduler.pick("rr")
    await scheduler.pick("rr")
    await rpc_error(scheduler.pick("ll", exclude=("b",)))  # nobody left to take it
    await rpc_error(scheduler.pick("nobody-serves-this"))

    def picks(model: str, policy: str, outcome: str) -> float:
        return scheduler.sample(
            "cic_scheduler_picks_total", model=model, policy=policy, outcome=outcome
        )

    assert picks("rr", "round_robin", "ok") == 2
    assert picks("ll", "least_loaded", "no_node") == 1
    assert picks("_unknown", "least_loaded", "unknown_model") == 1
    assert scheduler.sample("cic_scheduler_pick_duration_seconds_count") == 4
    assert scheduler.sample("cic_scheduler_pick_duration_seconds_sum") > 0


def _node_gauges(scheduler: RunningScheduler, node_id: str) -> tuple[float | None, float | None]:
    labels = {"node_id": node_id, "model": "m"}
    return (
        scheduler.metrics.get_sample_value("cic_scheduler_node_in_flight", labels),
        scheduler.metrics.get_sample_value("cic_scheduler_node_breaker_state", labels),
    )


async def test_in_flight_and_breaker_state_per_node(start_scheduler: StartScheduler) -> None:
    scheduler = await start_scheduler(BREAKER_FAILURES="1", BREAKER_OPEN_S="3600")
    await scheduler.register("n")
    assert _node_gauges(scheduler, "n") == (0, 0)

    first, second = await scheduler.pick(), await scheduler.pick()
    assert _node_gauges(scheduler, "n") == (2, 0)
    await scheduler.release(first.lease_id)
    assert _node_gauges(scheduler, "n") == (1, 0)
    await scheduler.release(second.lease_id, pb.OUTCOME_NODE_ERROR)
    assert _node_gauges(scheduler, "n") == (0, 1), "one node error opens the breaker"
    err = await rpc_error(scheduler.pick())
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    await scheduler.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="n"))
    assert _node_gauges(scheduler, "n") == (None, None), "a removed node's series go"


async def test_scrape_failures_are_counted_and_the_collector_is_shown(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(LOAD_SCRAPE_INTERVAL_S="0.02", LOAD_SCRAPE_TIMEOUT_S="1")
    await scheduler.register("gone", endpoint="http://127.0.0.1:1")  # nothing listens there

    async def failures() -> float:
        return scheduler.sample("cic_scheduler_load_scrape_failures_total")

    await eventually(failures, lambda count: count >= 2)
    assert scheduler.sample("cic_scheduler_signals_collector") == 1
    assert not (await scheduler.nodes())["gone"].HasField("load")
