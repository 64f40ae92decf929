"""The autoscaler's latency probe against a real HTTP server: only the time-to-first-token
histogram of a node's /metrics is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web

from cic_orchestrator.latency import LatencyProbe
from cic_orchestrator.nodes import NodeRecord, NodeState

TTFT = "vllm:time_to_first_token_seconds"


def _metrics(total_s: float, count: int) -> str:
    """vLLM-like /metrics: a line of another family that is no Prometheus text, then TTFT."""
    labels = 'model_name="m"'
    return (
        "# HELP vllm:num_requests_running Requests running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{model_name=m} not-a-number\n"
        f"# HELP {TTFT} Histogram of time to first token in seconds.\n"
        f"# TYPE {TTFT} histogram\n"
        f'{TTFT}_bucket{{{labels},le="+Inf"}} {count}.0\n'
        f"{TTFT}_sum{{{labels}}} {total_s}\n"
        f"{TTFT}_count{{{labels}}} {count}.0\n"
    )


@pytest.fixture
async def node_metrics() -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose /metrics answers the next text of the returned list."""
    texts: list[str] = []

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=texts.pop(0))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", texts
    finally:
        await runner.cleanup()


async def test_the_ttft_histogram_is_read_whatever_else_metrics_holds(
    node_metrics: tuple[str, list[str]],
) -> None:
    endpoint, texts = node_metrics
    at = datetime.now(UTC)
    node = NodeRecord(
        "node-000000000001", "m", "local", "", "local", (), NodeState.READY, endpoint, "", {},
        at, at,
    )  # fmt: skip
    texts += [_metrics(1.0, 10), _metrics(4.0, 20)]
    probe = LatencyProbe()
    try:
        assert await probe.ttft_ms_by_model([node]) == {}  # the baseline
        assert await probe.ttft_ms_by_model([node]) == {"m": 300.0}  # 3 s over 10 requests
    finally:
        await probe.close()
