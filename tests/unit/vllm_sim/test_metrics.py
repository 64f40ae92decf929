"""GET /metrics under vLLM's names, and the other node routes."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.vllm_sim.helpers import MODEL, SimFactory, chat_body, wait_for_stats

CHAT = "/v1/chat/completions"


async def scrape(sim: TestClient) -> dict[str, float]:
    """Every sample as ``name{sorted labels}`` -> value."""
    response = await sim.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def labels(**extra: str) -> str:
    return ",".join(
        f"{k}={v}" for k, v in sorted({"engine": "0", "model_name": MODEL, **extra}.items())
    )


async def test_metrics_use_vllm_names_and_the_model_name_label(sim: TestClient) -> None:
    await sim.post(CHAT, json=chat_body(max_tokens=4))
    text = await (await sim.get("/metrics")).text()
    for line in (
        'vllm:num_requests_running{engine="0",model_name="cic-sim-small"} 0.0',
        'vllm:num_requests_waiting{engine="0",model_name="cic-sim-small"} 0.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="cic-sim-small"} 0.0',
        'vllm:prompt_tokens_total{engine="0",model_name="cic-sim-small"} 8.0',
        'vllm:generation_tokens_total{engine="0",model_name="cic-sim-small"} 4.0',
    ):
        assert line in text.splitlines()
    samples = await scrape(sim)
    assert samples[f"vllm:request_success_total{{{labels(finished_reason='length')}}}"] == 1.0
    assert samples[f"vllm:request_success_total{{{labels(finished_reason='stop')}}}"] == 0.0
    assert samples[f"vllm:time_to_first_token_seconds_count{{{labels()}}}"] == 1.0
    assert samples[f"vllm:e2e_request_latency_seconds_count{{{labels()}}}"] == 1.0
    assert samples[f"vllm:inter_token_latency_seconds_count{{{labels()}}}"] == 0.0


async def test_streams_observe_inter_token_latency(sim: TestClient) -> None:
    response = await sim.post(CHAT, json=chat_body(max_tokens=4, stream=True))
    await response.read()
    samples = await scrape(sim)
    assert samples[f"vllm:inter_token_latency_seconds_count{{{labels()}}}"] == 3.0
    assert samples[f"vllm:generation_tokens_total{{{labels()}}}"] == 4.0


async def test_requests_beyond_max_num_seqs_wait(make_sim: SimFactory) -> None:
    sim = await make_sim(max_num_seqs=1, itl_ms=20, kv_cache_tokens=100)
    first = await sim.post(CHAT, json=chat_body(stream=True, max_tokens=500))
    await first.content.readuntil(b"\n\n")
    second = await sim.post(CHAT, json=chat_body(stream=True, max_tokens=500))
    await wait_for_stats(sim, lambda s: s["waiting"] == 1)
    samples = await scrape(sim)
    assert samples[f"vllm:num_requests_running{{{labels()}}}"] == 1.0
    assert samples[f"vllm:num_requests_waiting{{{labels()}}}"] == 1.0
    assert 0.08 <= samples[f"vllm:kv_cache_usage_perc{{{labels()}}}"] <= 1.0
    first.close()
    await second.content.readuntil(b"\n\n")
    await wait_for_stats(sim, lambda s: s["waiting"] == 0 and s["running"] == 1)
    second.close()
    await wait_for_stats(sim, lambda s: s["running"] == 0)
    assert (await scrape(sim))[f"vllm:kv_cache_usage_perc{{{labels()}}}"] == 0.0


async def test_models_lists_the_served_model(make_sim: SimFactory) -> None:
    sim = await make_sim(max_model_len=2048)
    body = await (await sim.get("/v1/models")).json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert {k: card[k] for k in ("id", "object", "owned_by", "root", "parent")} == {
        "id": MODEL,
        "object": "model",
        "owned_by": "vllm",
        "root": MODEL,
        "parent": None,
    }
    assert card["max_model_len"] == 2048
    [permission] = card["permission"]
    assert permission["object"] == "model_permission"
    assert re.fullmatch(r"modelperm-[0-9a-f]{32}", permission["id"])


async def test_served_model_name_is_the_api_name(make_sim: SimFactory) -> None:
    sim = await make_sim(served_model_name="alias")
    card = (await (await sim.get("/v1/models")).json())["data"][0]
    assert (card["id"], card["root"]) == ("alias", MODEL)
    response = await sim.post(CHAT, json=chat_body() | {"model": "alias"})
    assert (await response.json())["model"] == "alias"
    assert (await sim.post(CHAT, json=chat_body())).status == 404


async def test_health_and_version(sim: TestClient) -> None:
    health = await sim.get("/health")
    assert (health.status, await health.read()) == (200, b"")
    assert await (await sim.get("/version")).json() == {"version": "0.20.1"}
