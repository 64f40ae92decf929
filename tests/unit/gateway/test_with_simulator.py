"""The gateway in front of the project's own vLLM simulator: billed exactly what the node
reported, and a client that goes away aborts the generation on the node."""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from cic_vllm_sim.app import create_app as create_sim_app
from cic_vllm_sim.config import SimConfig
from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices

SIM_MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Tell me about inference clouds, briefly."}]


@pytest.fixture
async def sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=SIM_MODEL)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def sim_gateway(
    start_gateway: StartGateway, services: FakeServices, sim: TestServer
) -> Gateway:
    services.scheduler.add_node("sim-1", SIM_MODEL, f"http://127.0.0.1:{sim.port}")
    return await start_gateway()


async def _sim(gateway: Gateway, sim: TestServer, method: str, path: str, json=None) -> dict:
    async with gateway.session.request(
        method, f"http://127.0.0.1:{sim.port}{path}", json=json
    ) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_billing_gets_exactly_what_the_simulator_reported(
    sim_gateway: Gateway, sim: TestServer
) -> None:
    _, _, key = await sim_gateway.new_key()
    async with openai.AsyncOpenAI(
        api_key=key, base_url=f"{sim_gateway.url}/v1", max_retries=0
    ) as client:
        plain = await client.chat.completions.create(
            model=SIM_MODEL, messages=MESSAGES, max_tokens=12
        )
        stream = await client.chat.completions.create(
            model=SIM_MODEL,
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        quiet = await client.chat.completions.create(
            model=SIM_MODEL, messages=MESSAGES, max_tokens=12, stream=True
        )
        quiet_chunks = [c async for c in quiet]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert all(c.usage is None for c in quiet_chunks)
    assert plain.usage is not None and plain.usage.completion_tokens == 12

    events = await sim_gateway.services.billing.wait_for_events(3)
    stats = await _sim(sim_gateway, sim, "GET", "/sim/stats")
    assert sum(e.prompt_tokens for e in events) == stats["prompt_tokens"]
    assert sum(e.completion_tokens for e in events) == stats["completion_tokens"] == 12 + 20 + 12
    streamed = {e.streamed: e for e in events if e.completion_tokens == 20}
    assert streamed[True].prompt_tokens == usage_chunks[0].usage.prompt_tokens


async def test_client_disconnect_aborts_the_simulated_generation(
    sim_gateway: Gateway, sim: TestServer
) -> None:
    await _sim(sim_gateway, sim, "POST", "/sim/config", {"itl_ms": 50})
    _, _, key = await sim_gateway.new_key()
    body = {"model": SIM_MODEL, "messages": MESSAGES, "max_tokens": 400, "stream": True}
    resp = await sim_gateway.session.post(
        sim_gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200
    seen = b""
    while seen.count(b"\n\n") < 4:  # the role chunk and three tokens
        piece = await resp.content.readany()
        assert piece, "the stream ended early"
        seen += piece
    resp.close()

    stats = await _sim(sim_gateway, sim, "GET", "/sim/stats")
    for _ in range(200):
        if stats["aborted"]:
            break
        await asyncio.sleep(0.05)
        stats = await _sim(sim_gateway, sim, "GET", "/sim/stats")
    assert stats["aborted"] == 1 and stats["running"] == 0
    assert 3 <= stats["completion_tokens"] < 400

    (event,) = await sim_gateway.services.billing.wait_for_events(1)
    assert event.status_code == 499
    assert 3 <= event.completion_tokens <= stats["completion_tokens"]
    assert event.prompt_tokens == stats["prompt_tokens"]


async def test_simulated_node_failures_are_502(sim_gateway: Gateway, sim: TestServer) -> None:
    await _sim(sim_gateway, sim, "POST", "/sim/config", {"fail_rate": 1.0})
    _, _, key = await sim_gateway.new_key()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            sim_gateway.url + "/v1/chat/completions",
            json={"model": SIM_MODEL, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            assert resp.status == 502
