"""Exact usage for every stream, against the simulated vLLM node (which the gateway always asks
for usage on every chunk): the client gets exactly the usage it asked for, billing gets the
node's own numbers, and a client that goes away stops the node at once and is billed for what
the node produced until then."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from cic.scheduler.v1 import scheduler_pb2
from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sims import SIM_MODEL, Sim, SimFarm

MESSAGES = [{"role": "user", "content": "Tell me a long story about usage accounting."}]
ROUTES = {
    "/v1/chat/completions": {"messages": MESSAGES},
    "/v1/completions": {"prompt": "Tell me a long story about usage accounting."},
}


async def _sim_gateway(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm, **knobs: Any
) -> tuple[Gateway, Sim, str]:
    sim = await sims.start(**knobs)
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    return gateway, sim, key


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    buffered = b""
    async for piece in resp.content.iter_any():
        buffered += piece
        while b"\n\n" in buffered:
            event, buffered = buffered.split(b"\n\n", 1)
            assert event.startswith(b"data: ")
            yield event.removeprefix(b"data: ")


async def _stream(gateway: Gateway, key: str, path: str, **fields: Any) -> list[dict[str, Any]]:
    """Every chunk the client receives (``[DONE]`` checked and left out)."""
    body = {"model": SIM_MODEL, "stream": True, **ROUTES[path], **fields}
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.post(gateway.url + path, json=body, headers=headers) as resp:
        assert resp.status == 200
        payloads = [p async for p in _events(resp)]
    assert payloads[-1] == b"[DONE]" and b"[DONE]" not in payloads[:-1]
    return [orjson.loads(p) for p in payloads[:-1]]


async def test_clients_get_exactly_the_usage_they_asked_for(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _, key = await _sim_gateway(start_gateway, services, sims)
    for path in ROUTES:
        quiet = await _stream(gateway, key, path, max_tokens=5)
        assert all(c.get("usage") is None for c in quiet), "no usage was asked for"
        assert all(c["choices"] for c in quiet)

        final_only = await _stream(
            gateway, key, path, max_tokens=5, stream_options={"include_usage": True}
        )
        *tokens, last = final_only
        assert all(c.get("usage") is None and c["choices"] for c in tokens)
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5

        every = await _stream(
            gateway,
            key,
            path,
            max_tokens=5,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
        assert all(c["usage"] is not None for c in every)
        assert [c["choices"] == [] for c in every].count(True) == 1
        assert every[-1]["usage"] == last["usage"]


async def test_billing_records_the_nodes_own_numbers(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, sim, key = await _sim_gateway(start_gateway, services, sims)
    for count, path in enumerate(ROUTES, start=1):
        before = await sim.stats()
        # No max_tokens: the node picks the length, so only the node knows the numbers.
        chunks = await _stream(gateway, key, path)
        after = await sim.stats()
        event = (await gateway.services.billing.wait_for_events(count))[-1]
        assert event.streamed and event.status_code == 200
        assert event.prompt_tokens == after["prompt_tokens"] - before["prompt_tokens"]
        assert event.completion_tokens == after["completion_tokens"] - before["completion_tokens"]
        assert event.completion_tokens == len([c for c in chunks if _has_token(c)])
        release = (await gateway.services.scheduler.wait_for_releases(count))[-1]
        assert (release.prompt_tokens, release.completion_tokens) == (
            event.prompt_tokens,
            event.completion_tokens,
        )


def _has_token(chunk: dict[str, Any]) -> bool:
    choice = chunk["choices"][0]
    return bool(choice.get("text") or choice.get("delta", {}).get("content"))


async def _stats_when(sim: Sim, done: Any) -> dict[str, Any]:
    """The node's counters once ``done(stats)`` holds (waiting up to 10 s)."""
    for _ in range(200):
        stats = await sim.stats()
        if done(stats):
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"the node never got there: {stats}")


async def test_a_client_going_away_stops_the_node_and_is_billed_what_it_produced(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, sim, key = await _sim_gateway(start_gateway, services, sims, itl_ms=50)
    body = {"model": SIM_MODEL, "messages": MESSAGES, "max_tokens": 500, "stream": True}
    resp = await gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    seen = 0
    async for payload in _events(resp):
        chunk = orjson.loads(payload)
        assert "usage" not in chunk
        seen += _has_token(chunk)
        if seen == 5:
            break
    resp.close()  # the client goes away mid-stream

    stats = await _stats_when(sim, lambda s: s["aborted"] == 1)
    assert stats["running"] == 0 and stats["finished"] == {"abort": 1}
    assert seen <= stats["completion_tokens"] <= seen + 2, "the node stopped at once"
    await asyncio.sleep(0.25)  # five inter-token gaps: a node still generating would show it
    assert (await sim.stats())["completion_tokens"] == stats["completion_tokens"]

    (event,) = await gateway.services.billing.wait_for_events(1)
    assert event.status_code == 499 and event.streamed
    assert event.prompt_tokens == stats["prompt_tokens"]
    # The node counts a chunk once written to its socket; the gateway, once it read it.
    assert stats["completion_tokens"] - 1 <= event.completion_tokens <= stats["completion_tokens"]
    (release,) = await gateway.services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_CLIENT_ERROR
    assert release.completion_tokens == event.completion_tokens
