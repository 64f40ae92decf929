"""Failover with real simulated nodes: a node that fails before its first byte (refused, 5xx) is
given back as a node error and the request goes once to another node; a timeout is 504 and is
not retried; after the first byte the request never moves; one usage event per request."""

import asyncio

import openai
import pytest
from prometheus_client import CollectorRegistry

from cic.billing.v1 import billing_pb2
from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_common.grpc_client import create_channel
from cic_common.settings import parse_settings
from cic_gateway.resources import USAGE
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.server import create_service
from tests.support.net import free_port
from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sims import SIM_MODEL, SimFarm

MESSAGES = [{"role": "user", "content": "Say something about failover."}]
EMBED_MODEL = "cic-sim-embed"  # an embedding model in the fake catalog
NODE_ERROR = scheduler_pb2.OUTCOME_NODE_ERROR
SUCCESS = scheduler_pb2.OUTCOME_SUCCESS


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    # The SDK's own retries are off: what is retried here is the gateway's doing.
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0)


async def _all_events(gateway: Gateway, at_least: int) -> list[billing_pb2.UsageEvent]:
    """Every usage event of the requests answered so far (each emits before its response)."""
    await gateway.services.billing.wait_for_events(at_least)
    while gateway.app[USAGE].buffered:  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    return list(gateway.services.billing.events)


def _metric(gateway: Gateway, name: str, **labels: str) -> float | None:
    return gateway.registry.get_sample_value(name, labels)


async def _one_of_each(client: openai.AsyncOpenAI) -> list[int]:
    """A chat, a streamed chat, a completion and an embedding; the completion tokens of each."""
    chat = await client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=5)
    stream = await client.chat.completions.create(
        model=SIM_MODEL, messages=MESSAGES, max_tokens=7, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    completion = await client.completions.create(model=SIM_MODEL, prompt="a b c", max_tokens=3)
    embedding = await client.embeddings.create(model=EMBED_MODEL, input="a b c")
    assert chat.choices[0].message.content and text and completion.choices[0].text
    assert embedding.data[0].embedding
    return [5, 7, 3, 0]


async def test_every_request_succeeds_via_the_retry_when_one_node_fails(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    bad = await sims.start(fail_rate=1.0)
    good = await sims.start()
    bad_embed = await sims.start(EMBED_MODEL, fail_rate=1.0)
    good_embed = await sims.start(EMBED_MODEL)
    services.scheduler.add_node("bad", SIM_MODEL, bad.endpoint)  # picked first, every time
    services.scheduler.add_node("good", SIM_MODEL, good.endpoint)
    services.scheduler.add_node("bad", EMBED_MODEL, bad_embed.endpoint)
    services.scheduler.add_node("good", EMBED_MODEL, good_embed.endpoint)
    gateway = await start_gateway()
    tenant_id, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        tokens = await _one_of_each(client)

    assert services.scheduler.excluded == [[], ["bad"]] * 4
    releases = await services.scheduler.wait_for_releases(8)
    assert [r.outcome for r in releases] == [NODE_ERROR, SUCCESS] * 4
    assert [r.completion_tokens for r in releases[::2]] == [0] * 4

    events = await _all_events(gateway, 4)
    assert len(events) == 4, "a retried request is one usage event"
    assert {(e.node_id, e.status_code, e.tenant_id) for e in events} == {("good", 200, tenant_id)}
    assert [e.completion_tokens for e in events] == tokens
    good_stats, bad_stats = await good.stats(), await bad.stats()
    good_embed_stats, bad_embed_stats = await good_embed.stats(), await bad_embed.stats()
    assert sum(e.prompt_tokens for e in events) == (
        good_stats["prompt_tokens"] + good_embed_stats["prompt_tokens"]
    )
    assert sum(e.completion_tokens for e in events) == good_stats["completion_tokens"]
    assert (bad_stats["failed"], bad_stats["completion_tokens"]) == (3, 0)
    assert bad_embed_stats["failed"] == 1
    assert _metric(gateway, "cic_gateway_failovers_total", result="retried") == 4


async def test_both_nodes_failing_is_502_after_a_single_retry(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    first, second = await sims.start(fail_rate=1.0), await sims.start(fail_rate=1.0)
    services.scheduler.add_node("first", SIM_MODEL, first.endpoint)
    services.scheduler.add_node("second", SIM_MODEL, second.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        with pytest.raises(openai.InternalServerError) as plain:
            await client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES)
        with pytest.raises(openai.InternalServerError) as streamed:
            await client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, stream=True)
    for failure in (plain, streamed):
        assert failure.value.status_code == 502
        assert failure.value.code == "upstream_error"
    assert ((await first.stats())["failed"], (await second.stats())["failed"]) == (2, 2)
    releases = await services.scheduler.wait_for_releases(4)
    assert [r.outcome for r in releases] == [NODE_ERROR] * 4
    events = await _all_events(gateway, 2)
    assert [(e.status_code, e.completion_tokens) for e in events] == [(502, 0), (502, 0)]
    assert _metric(gateway, "cic_gateway_upstream_errors_total", kind="status_5xx") == 4
    assert _metric(gateway, "cic_gateway_failovers_total", result="retried") == 2


async def test_a_refused_port_registered_as_a_node_is_retried_elsewhere(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    good = await sims.start()
    services.scheduler.add_node("gone", SIM_MODEL, f"http://127.0.0.1:{free_port()}")
    services.scheduler.add_node("good", SIM_MODEL, good.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        answer = await client.chat.completions.create(
            model=SIM_MODEL, messages=MESSAGES, max_tokens=4
        )
        stream = await client.chat.completions.create(
            model=SIM_MODEL, messages=MESSAGES, max_tokens=6, stream=True
        )
        chunks = [c async for c in stream]
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert chunks[-1].choices[0].finish_reason == "length"
    releases = await services.scheduler.wait_for_releases(4)
    assert [r.outcome for r in releases] == [NODE_ERROR, SUCCESS] * 2
    events = await _all_events(gateway, 2)
    assert [(e.node_id, e.completion_tokens) for e in events] == [("good", 4), ("good", 6)]
    assert _metric(gateway, "cic_gateway_upstream_errors_total", kind="connect") == 2


async def test_a_stream_that_drops_mid_way_is_not_retried(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    dropping, spare = await sims.start(drop_rate=1.0), await sims.start()
    services.scheduler.add_node("dropping", SIM_MODEL, dropping.endpoint)
    services.scheduler.add_node("spare", SIM_MODEL, spare.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    received = []
    async with _client(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=SIM_MODEL, messages=MESSAGES, max_tokens=20, stream=True
        )
        with pytest.raises(openai.APIError) as failure:
            async for chunk in stream:
                received.append(chunk)
    assert "node" in failure.value.message
    assert [c.choices[0].delta.content is not None for c in received] == [True] * 4
    stats = await dropping.stats()
    assert stats["dropped"] == 1
    assert "/v1/chat/completions" not in (await spare.stats())["requests"]
    (release,) = await services.scheduler.wait_for_releases(1)
    assert release.outcome == NODE_ERROR
    (event,) = await _all_events(gateway, 1)
    assert (event.node_id, event.status_code) == ("dropping", 502)
    assert event.completion_tokens == stats["completion_tokens"] == 3
    assert _metric(gateway, "cic_gateway_upstream_errors_total", kind="bad_stream") == 1
    assert _metric(gateway, "cic_gateway_failovers_total", result="retried") is None


async def test_a_node_timing_out_is_504_and_not_retried(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    slow, spare = await sims.start(), await sims.start()
    await slow.configure(hang=True)
    services.scheduler.add_node("slow", SIM_MODEL, slow.endpoint)
    services.scheduler.add_node("spare", SIM_MODEL, spare.endpoint)
    gateway = await start_gateway(UPSTREAM_READ_TIMEOUT_S="0.1")
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        with pytest.raises(openai.InternalServerError) as plain:
            await client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES)
        # The node answered its headers, then nothing: the client still gets a status.
        with pytest.raises(openai.InternalServerError) as streamed:
            await client.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, stream=True)
    for failure in (plain, streamed):
        assert failure.value.status_code == 504
        assert failure.value.code == "upstream_timeout"
    assert "/v1/chat/completions" not in (await spare.stats())["requests"]
    assert services.scheduler.excluded == [[], []]
    releases = await services.scheduler.wait_for_releases(2)
    assert [r.outcome for r in releases] == [NODE_ERROR] * 2
    events = await _all_events(gateway, 2)
    assert [(e.node_id, e.status_code) for e in events] == [("slow", 504)] * 2
    assert _metric(gateway, "cic_gateway_upstream_errors_total", kind="timeout") == 2


async def test_a_stream_that_breaks_before_its_first_event_is_retried(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    # A one-token completion on a dropping node: headers, then the connection closes.
    dropping, spare = await sims.start(drop_rate=1.0), await sims.start()
    services.scheduler.add_node("dropping", SIM_MODEL, dropping.endpoint)
    services.scheduler.add_node("spare", SIM_MODEL, spare.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        stream = await client.completions.create(
            model=SIM_MODEL, prompt="a b", max_tokens=1, stream=True
        )
        chunks = [c async for c in stream]
    assert [c.choices[0].finish_reason for c in chunks] == ["length"]
    assert (await dropping.stats())["dropped"] == 1
    releases = await services.scheduler.wait_for_releases(2)
    assert [r.outcome for r in releases] == [NODE_ERROR, SUCCESS]
    (event,) = await _all_events(gateway, 1)
    assert (event.node_id, event.status_code, event.completion_tokens) == ("spare", 200, 1)


async def test_the_real_scheduler_excludes_the_failed_node(
    start_gateway: StartGateway, sims: SimFarm, redis_url: str, redis_prefix: str
) -> None:
    bad, good = await sims.start(fail_rate=1.0), await sims.start()
    settings = {"GRPC_PORT": "0", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    scheduler = await create_service(
        parse_settings(SchedulerSettings, settings), CollectorRegistry()
    )
    port = await scheduler.start(host="127.0.0.1")
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        for node_id, sim in (("a-bad", bad), ("b-good", good)):
            await stub.RegisterNode(
                scheduler_pb2.RegisterNodeRequest(
                    id=node_id, model=SIM_MODEL, endpoint=sim.endpoint
                )
            )
        gateway = await start_gateway(SCHEDULER_ADDR=f"127.0.0.1:{port}")
        _, _, key = await gateway.new_key()
        async with _client(gateway, key) as client:
            for _ in range(6):
                await client.chat.completions.create(
                    model=SIM_MODEL, messages=MESSAGES, max_tokens=2
                )
        assert (await bad.stats())["failed"] >= 1, "the bad node was picked first at least once"
        events = await _all_events(gateway, 6)
        assert [(e.node_id, e.completion_tokens) for e in events] == [("b-good", 2)] * 6
    finally:
        await channel.close()
        await scheduler.stop(0)
