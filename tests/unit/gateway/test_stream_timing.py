"""Streams reach the client as the node produces them: with a simulated node 50 ms between
tokens, the chunks arrive through the gateway spread over time, not in one burst at the end.
What is measured is when each chunk arrived, not how fast anything was."""

import time

import openai

from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sims import SIM_MODEL, SimFarm

TOKENS = 10
ITL_MS = 50


async def _sim_gateway(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> tuple[Gateway, str]:
    sim = await sims.start(itl_ms=ITL_MS)
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    return gateway, key


def _most_within(arrivals: list[float], window_s: float) -> int:
    """The largest number of arrivals inside any window of ``window_s``."""
    return max(sum(1 for t in arrivals if start <= t < start + window_s) for start in arrivals)


async def test_chunks_arrive_spread_out_as_the_node_makes_them(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, key = await _sim_gateway(start_gateway, services, sims)
    body = {"model": SIM_MODEL, "prompt": "Count slowly", "max_tokens": TOKENS, "stream": True}
    arrivals = []
    async with gateway.session.post(
        gateway.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        buffered = b""
        async for piece in resp.content.iter_any():
            buffered += piece
            while b"\n\n" in buffered:
                event, buffered = buffered.split(b"\n\n", 1)
                if event != b"data: [DONE]":
                    arrivals.append(time.perf_counter())
    assert len(arrivals) == TOKENS
    assert arrivals[-1] - arrivals[0] >= 0.3
    assert _most_within(arrivals, 0.010) <= 2


async def test_the_sdk_gets_chat_chunks_as_they_come(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, key = await _sim_gateway(start_gateway, services, sims)
    arrivals = []
    async with openai.AsyncOpenAI(
        api_key=key, base_url=f"{gateway.url}/v1", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model=SIM_MODEL,
            messages=[{"role": "user", "content": "Count slowly"}],
            max_tokens=TOKENS,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == TOKENS
    assert arrivals[-1] - arrivals[0] >= 0.3
    assert _most_within(arrivals, 0.010) <= 2
