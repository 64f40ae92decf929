"""The load signal: each node's own vLLM ``/metrics`` scraped into the shared registry, from the
project's simulator and from a node exposing only vLLM's older KV-cache gauge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_scheduler.load import NotVllmMetrics, parse_load
from tests.unit.gateway.sims import SimFarm
from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import RunningScheduler, eventually
from tests.unit.scheduler.vllm_metrics import OldVllmMetrics, scrapes_pass

FAST = {"LOAD_SCRAPE_INTERVAL_S": "0.02", "LOAD_SCRAPE_TIMEOUT_S": "1"}

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_running{engine="0",model_name="other"} 40.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 7.0
"""


@pytest.fixture
async def old_node() -> AsyncIterator[OldVllmMetrics]:
    node = OldVllmMetrics(running=2, waiting=7, gpu_cache=0.75)
    await node.start()
    yield node
    await node.stop()


@pytest.fixture
async def sims() -> AsyncIterator[SimFarm]:
    farm = SimFarm()
    yield farm
    await farm.close()


def test_counts_are_summed_over_the_models_engines_and_the_new_cache_gauge_wins() -> None:
    sample = parse_load(PAGE, "m", scraped_at=12.5)
    assert (sample.running, sample.waiting) == (5.0, 5.0)
    assert sample.kv_cache_usage == 0.5, "the fullest engine's, from kv_cache_usage_perc"
    assert sample.scraped_at == 12.5


def test_a_node_exporting_another_model_name_is_read_whole() -> None:
    sample = parse_load(PAGE, "alias-of-m", scraped_at=0)
    assert (sample.running, sample.waiting) == (45.0, 5.0)


def test_a_page_without_vllms_gauges_is_refused() -> None:
    with pytest.raises(NotVllmMetrics):
        parse_load("# TYPE up gauge\nup 1\n", "m", scraped_at=0)
    with pytest.raises(NotVllmMetrics):
        parse_load('vllm:num_requests_running{model_name="m" 1\n', "m", scraped_at=0)


def test_the_text_format_is_read_as_prometheus_writes_it() -> None:
    """Escaped label values (quotes, braces, commas, backslashes), timestamps, names that only
    start like a gauge's, and a gauge's name inside another line's label value."""
    page = (
        '# HELP vllm:num_requests_running says vllm:num_requests_running{model_name="m"} 99\n'
        'vllm:num_requests_running_total{model_name="m"} 50\n'
        'other{note="vllm:num_requests_waiting{model_name=\\"m\\"} 77"} 1\n'
        'vllm:num_requests_running{model_name="m \\"q\\" {x},y\\\\"} 2 1700000000000\n'
        'vllm:num_requests_running{engine="0", model_name="m \\"q\\" {x},y\\\\",} 3\n'
        "vllm:num_requests_waiting 4\n"
        'vllm:kv_cache_usage_perc{model_name="m \\"q\\" {x},y\\\\"} 0.125\n'
    )
    sample = parse_load(page, 'm "q" {x},y\\', scraped_at=0)
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (5.0, 4.0, 0.125)


async def _load(scheduler: RunningScheduler, node_id: str) -> pb.NodeLoad | None:
    node = (await scheduler.nodes())[node_id]
    return node.load if node.HasField("load") else None


async def _chat(session: aiohttp.ClientSession, endpoint: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi " * 20}]}
    async with session.post(f"{endpoint}/v1/chat/completions", json=body) as response:
        await response.read()


async def test_a_simulators_running_waiting_and_kv_cache_reach_the_registry(
    start_scheduler: StartScheduler, sims: SimFarm
) -> None:
    sim = await sims.start(model="m", max_num_seqs=2, kv_cache_tokens=200, ttft_ms=60_000)
    scheduler = await start_scheduler(**FAST)
    await scheduler.register("sim", "m", endpoint=sim.endpoint)
    idle = await eventually(lambda: _load(scheduler, "sim"), lambda load: load is not None)
    assert idle is not None and (idle.running, idle.waiting, idle.kv_cache_usage) == (0, 0, 0)

    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(_chat(session, sim.endpoint, "m")) for _ in range(3)]
        busy = await eventually(
            lambda: _load(scheduler, "sim"),
            lambda load: load is not None and (load.running, load.waiting) == (2, 1),
        )
        assert busy is not None and 0 < busy.kv_cache_usage <= 1
        assert busy.scraped_at.ToNanoseconds() > idle.scraped_at.ToNanoseconds()
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    await eventually(
        lambda: _load(scheduler, "sim"),
        lambda load: load is not None and (load.running, load.waiting) == (0, 0),
    )


async def test_a_node_with_only_the_older_cache_gauge_is_read_and_keeps_its_sample_on_failure(
    start_scheduler: StartScheduler, old_node: OldVllmMetrics
) -> None:
    scheduler = await start_scheduler(**FAST)
    await scheduler.register("old", "m", endpoint=old_node.endpoint)
    load = await eventually(lambda: _load(scheduler, "old"), lambda load: load is not None)
    assert load is not None and (load.running, load.waiting, load.kv_cache_usage) == (2, 7, 0.75)

    old_node.status = 500
    await scrapes_pass(old_node, 3)
    kept = await _load(scheduler, "old")
    await scrapes_pass(old_node, 3)
    assert await _load(scheduler, "old") == kept, "a failing node keeps its last sample"
    assert kept is not None and (kept.running, kept.waiting, kept.kv_cache_usage) == (2, 7, 0.75)
    assert scheduler.sample("cic_scheduler_load_scrape_failures_total") >= 3
