"""Client aborts, injected failures and drops, and the runtime controls under /sim."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.unit.vllm_sim.helpers import SimFactory, chat_body, parse_events, stats, wait_for_stats

CHAT = "/v1/chat/completions"


async def test_client_disconnect_aborts_generation(make_sim: SimFactory) -> None:
    sim = await make_sim(itl_ms=5)
    response = await sim.post(CHAT, json=chat_body(stream=True, max_tokens=2000))
    assert response.status == 200
    await response.content.readuntil(b"\n\n")
    await response.content.readuntil(b"\n\n")
    response.close()
    after_abort = await wait_for_stats(sim, lambda s: s["aborted"] == 1 and s["running"] == 0)
    assert after_abort["finished"] == {"abort": 1}
    assert 1 <= after_abort["completion_tokens"] < 2000
    await asyncio.sleep(0.05)
    assert (await stats(sim))["completion_tokens"] == after_abort["completion_tokens"]
    metrics = await (await sim.get("/metrics")).text()
    assert 'vllm:request_success_total{engine="0",finished_reason="abort",' in metrics
    assert 'finished_reason="abort",model_name="cic-sim-small"} 1.0' in metrics


async def test_stream_chunks_leave_as_they_are_made(make_sim: SimFactory) -> None:
    sim = await make_sim(itl_ms=500)
    response = await sim.post(CHAT, json=chat_body(stream=True, max_tokens=5))
    role = parse_events((await response.content.readuntil(b"\n\n")).decode())
    first = parse_events((await response.content.readuntil(b"\n\n")).decode())
    assert role[0]["choices"][0]["delta"]["role"] == "assistant"
    assert first[0]["choices"][0]["delta"]["content"]
    assert (await stats(sim))["completion_tokens"] == 1
    response.close()


async def test_fail_rate_one_answers_500_before_any_byte(make_sim: SimFactory) -> None:
    sim = await make_sim(fail_rate=1.0)
    for body in (chat_body(), chat_body(stream=True)):
        response = await sim.post(CHAT, json=body)
        assert response.status == 500
        assert response.headers["Content-Type"] == "application/json"
        assert await response.json() == {
            "error": {
                "message": "Internal server error",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        }
    current = await stats(sim)
    assert (current["failed"], current["prompt_tokens"]) == (2, 0)


async def test_drop_rate_one_cuts_streams_without_done(make_sim: SimFactory) -> None:
    sim = await make_sim(drop_rate=1.0)
    response = await sim.post(CHAT, json=chat_body(stream=True, max_tokens=20))
    assert response.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for data in response.content.iter_any():
            received += data
    events = parse_events(received.decode())
    assert "[DONE]" not in events
    assert len(events) == 4  # the role chunk and three tokens
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    current = await wait_for_stats(sim, lambda s: s["running"] == 0)
    assert (current["dropped"], current["aborted"], current["completion_tokens"]) == (1, 1, 3)
    plain = await sim.post(CHAT, json=chat_body(max_tokens=2))
    assert plain.status == 200


async def test_fault_rates_follow_the_seed(make_sim: SimFactory) -> None:
    async def outcomes(seed: int) -> list[int]:
        sim = await make_sim(fail_rate=0.5, seed=seed)
        return [(await sim.post(CHAT, json=chat_body(max_tokens=1))).status for _ in range(20)]

    first = await outcomes(1)
    assert first == await outcomes(1)
    assert set(first) == {200, 500}


async def test_hang_holds_requests_until_released(sim: TestClient) -> None:
    response = await sim.post("/sim/config", json={"hang": True})
    assert (await response.json())["hang"] is True
    pending = asyncio.create_task(sim.post(CHAT, json=chat_body(max_tokens=2)))
    await wait_for_stats(sim, lambda s: s["waiting"] == 1)
    assert not pending.done()
    health = await sim.get("/health")
    assert (health.status, await health.read()) == (200, b"")
    await sim.post("/sim/config", json={"hang": False})
    response = await pending
    assert response.status == 200
    assert (await response.json())["usage"]["completion_tokens"] == 2


async def test_a_hung_request_whose_client_leaves_is_aborted(sim: TestClient) -> None:
    await sim.post("/sim/config", json={"hang": True})
    timeout = aiohttp.ClientTimeout(total=0.1)
    with pytest.raises(asyncio.TimeoutError):
        await sim.post(CHAT, json=chat_body(), timeout=timeout)
    current = await wait_for_stats(sim, lambda s: s["aborted"] == 1)
    assert (current["waiting"], current["prompt_tokens"]) == (0, 0)


async def test_sim_config_changes_latency_and_faults_at_runtime(sim: TestClient) -> None:
    response = await sim.post("/sim/config", json={"fail_rate": 1, "ttft_ms": 5})
    assert await response.json() == {
        "ttft_ms": 5.0,
        "itl_ms": 0.0,
        "fail_rate": 1.0,
        "drop_rate": 0.0,
        "hang": False,
    }
    assert (await sim.post(CHAT, json=chat_body())).status == 500
    await sim.post("/sim/config", json={"fail_rate": 0})
    assert (await sim.post(CHAT, json=chat_body())).status == 200
    assert (await (await sim.get("/sim/config")).json())["ttft_ms"] == 5.0


async def test_sim_config_rejects_bad_settings(sim: TestClient) -> None:
    for body in ({"fail_rate": 2}, {"ttft_ms": -1}, {"hang": "yes"}, {"latency": 1}, [1]):
        response = await sim.post("/sim/config", json=body)
        assert response.status == 400
        assert "error" in await response.json()
    assert (await (await sim.get("/sim/config")).json())["fail_rate"] == 0.0
