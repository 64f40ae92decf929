"""Streams: relayed event by event, exactly the usage chunks the client asked for, billed with
the node's numbers, and cut off at the node as soon as the client goes away."""

import asyncio

import aiohttp
import openai
import orjson
import pytest

from cic.scheduler.v1 import scheduler_pb2
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.upstream import FakeNode

MESSAGES = [{"role": "user", "content": "one two three"}]


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0)


async def _events(resp: aiohttp.ClientResponse):
    """The ``data`` of each server-sent event, as it arrives."""
    buffer = b""
    async for piece in resp.content.iter_any():
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: ")
            yield event[len(b"data: ") :]


async def test_stream_without_usage_request_gets_no_usage_but_is_billed(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, stream=True
        )
        chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "".join(f"t{i} " for i in range(6))

    options = gateway.node.bodies[-1]["stream_options"]
    assert options == {"include_usage": True, "continuous_usage_stats": True}

    (event,) = await gateway.services.billing.wait_for_events(1)
    assert (event.tenant_id, event.prompt_tokens, event.completion_tokens) == (tenant_id, 3, 6)
    assert event.streamed is True and event.status_code == 200
    (release,) = await gateway.services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_SUCCESS
    assert release.completion_tokens == 6


async def test_include_usage_gives_exactly_one_usage_chunk(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1] and with_usage[0].choices == []
    assert (with_usage[0].usage.prompt_tokens, with_usage[0].usage.completion_tokens) == (3, 4)


async def test_continuous_usage_is_kept_when_the_client_asked_for_it(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        payloads = [p async for p in _events(resp)]
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all("usage" in c for c in chunks)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 3, 3]


async def test_text_completions_stream_too(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        stream = await client.completions.create(
            model=MODEL, prompt="a b", max_tokens=3, stream=True
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == "t0 t1 t2 "
    (event,) = await gateway.services.billing.wait_for_events(1)
    assert (event.prompt_tokens, event.completion_tokens, event.streamed) == (2, 3, True)


async def test_chunks_reach_the_client_while_the_node_is_still_generating(
    gateway: Gateway,
) -> None:
    gateway.node.hold_after = 1
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
        )
        chunks = aiter(stream)
        # The node now waits until this test lets it go on: a gateway that buffered the stream
        # would never hand over the first chunk.
        first = await asyncio.wait_for(anext(chunks), timeout=10)
        assert first.choices[0].delta.content == "t0 "
        gateway.node.resume.set()
        rest = [c async for c in chunks]
    assert "".join(c.choices[0].delta.content or "" for c in rest) == "t1 t2 t3 "


async def test_client_disconnect_aborts_the_node_and_bills_what_was_produced(
    gateway: Gateway,
) -> None:
    gateway.node.hold_after = 2  # then waits for ever, as a long generation would
    _, _, key = await gateway.new_key()
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 50, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    resp = await gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers=headers
    )
    received = []
    async for payload in _events(resp):
        received.append(orjson.loads(payload))
        if len(received) == 2:
            break
    resp.close()  # the client goes away mid-stream

    await asyncio.wait_for(gateway.node.abort_seen.wait(), timeout=10)
    assert gateway.node.aborted == 1 and gateway.node.tokens_sent == [2]
    assert all("usage" not in c for c in received)
    (event,) = await gateway.services.billing.wait_for_events(1)
    assert (event.prompt_tokens, event.completion_tokens) == (3, 2)
    assert event.status_code == 499 and event.streamed is True
    (release,) = await gateway.services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_CLIENT_ERROR
    assert release.completion_tokens == 2


async def test_node_dropping_mid_stream_ends_the_stream_with_an_error(gateway: Gateway) -> None:
    gateway.node.mode = "drop_mid_stream"
    _, _, key = await gateway.new_key()
    received = []
    async with _client(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, stream=True
        )
        with pytest.raises(openai.APIError) as failure:
            async for chunk in stream:
                received.append(chunk)
    assert len(received) == 3
    assert "node" in failure.value.message
    (event,) = await gateway.services.billing.wait_for_events(1)
    assert (event.completion_tokens, event.status_code) == (3, 502)
    (release,) = await gateway.services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_NODE_ERROR


async def test_node_going_silent_mid_stream_times_out(
    start_gateway: StartGateway, services: FakeServices, node: FakeNode
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway(UPSTREAM_READ_TIMEOUT_S="0.3")
    node.hold_after = 2
    _, _, key = await gateway.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10, "stream": True}
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as resp:
        assert resp.status == 200
        payloads = [orjson.loads(p) async for p in _events(resp)]
    assert len(payloads) == 3
    assert payloads[-1]["error"]["code"] == "upstream_timeout"
    (event,) = await services.billing.wait_for_events(1)
    assert (event.completion_tokens, event.status_code) == (2, 504)
    await asyncio.wait_for(node.abort_seen.wait(), timeout=10)
