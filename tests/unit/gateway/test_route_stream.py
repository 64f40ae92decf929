"""The gateway picks nodes and gives leases back over one ``Route`` stream to the scheduler,
and falls back to single calls while the stream is unavailable."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_gateway import scheduler_client
from cic_gateway.errors import ApiError
from cic_gateway.scheduler_client import Outcome, SchedulerClient
from tests.unit.gateway.conftest import MODEL, Gateway
from tests.unit.gateway.fakes import FakeScheduler, FakeServices


async def _chat(gateway: Gateway, key: str) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as resp:
        await resp.read()
        return resp.status


async def test_requests_pick_and_release_on_one_stream(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    statuses = await asyncio.gather(*(_chat(gateway, key) for _ in range(12)))
    assert statuses == [200] * 12
    fake = gateway.services.scheduler
    assert (fake.route_streams, fake.unary_picks) == (1, 0)
    releases = await fake.wait_for_releases(12)
    assert sorted(r.lease_id for r in releases) == sorted(f"lease-{n}" for n in range(1, 13))
    assert {r.outcome for r in releases} == {scheduler_pb2.OUTCOME_SUCCESS}


async def test_a_scheduler_without_the_stream_is_asked_with_single_calls(
    services: FakeServices, start_gateway, node
) -> None:
    services.scheduler.route = False
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    for _ in range(3):
        assert await _chat(gateway, key) == 200
    fake = services.scheduler
    assert fake.unary_picks == 3
    assert fake.route_calls == 1  # UNIMPLEMENTED once: never asked again
    assert len(await fake.wait_for_releases(3)) == 3


@pytest.fixture
async def client(services: FakeServices):
    services.scheduler.add_node("node-a", MODEL, "http://127.0.0.1:1")
    channel = grpc.aio.insecure_channel(services.address)
    client = SchedulerClient(scheduler_pb2_grpc.SchedulerServiceStub(channel), pick_timeout_s=0.2)
    yield client
    await client.drain(2)
    await channel.close()


async def test_a_broken_stream_falls_back_to_single_calls_then_reopens(
    services: FakeServices, client: SchedulerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_client, "ROUTE_RETRY_AFTER_S", 0.3)
    fake = services.scheduler
    first = await client.pick(MODEL)
    assert (fake.route_streams, fake.unary_picks) == (1, 0)
    fake.break_routes()
    await asyncio.sleep(0.05)
    # Released while the stream is down: the release goes as a call of its own.
    client.release_soon(first, Outcome.OUTCOME_SUCCESS, 1, 1)
    await client.pick(MODEL)  # right after the break: a single call
    assert (fake.route_streams, fake.unary_picks) == (1, 1)
    await asyncio.sleep(0.35)
    await client.pick(MODEL)  # after the pause: a new stream
    assert (fake.route_streams, fake.unary_picks) == (2, 1)
    assert [r.lease_id for r in await fake.wait_for_releases(1)] == [first.lease_id]


async def test_a_pick_answered_after_its_timeout_gives_its_lease_back(
    services: FakeServices, client: SchedulerClient
) -> None:
    fake = services.scheduler
    fake.route_delay_s = 0.5  # longer than the client's 0.2 s pick timeout
    with pytest.raises(ApiError) as refused:
        await client.pick(MODEL)
    assert refused.value.status == 503
    [release] = await fake.wait_for_releases(1)
    assert release.lease_id == "lease-1"
    assert release.outcome == scheduler_pb2.OUTCOME_CLIENT_ERROR


async def test_refusals_on_the_stream_map_to_the_same_errors(
    services: FakeServices, client: SchedulerClient
) -> None:
    services.scheduler.add_node("node-b", "warming", "http://127.0.0.1:1", ready=False)
    with pytest.raises(ApiError) as unknown:
        await client.pick("no-such-model")
    assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
    with pytest.raises(ApiError) as none_ready:
        await client.pick("warming")
    assert (none_ready.value.status, none_ready.value.code) == (503, "no_ready_node")
    assert services.scheduler.unary_picks == 0


def _shapes(fake: FakeScheduler) -> list[tuple[int, int]]:
    """(picks, releases) of every message the fake scheduler got on its Route streams."""
    return [(len(m.picks), len(m.releases)) for m in fake.route_messages]


async def test_a_release_leaves_with_the_next_pick(
    services: FakeServices, client: SchedulerClient
) -> None:
    fake = services.scheduler
    first = await client.pick(MODEL)
    client.release_soon(first, Outcome.OUTCOME_SUCCESS, 3, 4)
    await client.pick(MODEL)
    [released] = await fake.wait_for_releases(1)
    assert (released.lease_id, released.prompt_tokens) == (first.lease_id, 3)
    # One message carried both: the release waited for the pick instead of going on its own.
    assert _shapes(fake) == [(1, 0), (1, 1)]


async def test_a_release_with_no_pick_to_ride_with_leaves_on_its_own(
    services: FakeServices, client: SchedulerClient
) -> None:
    fake = services.scheduler
    lease = await client.pick(MODEL)
    client.release_soon(lease, Outcome.OUTCOME_NODE_ERROR, 0, 0)
    [released] = await fake.wait_for_releases(1, timeout=1.0)
    assert released.lease_id == lease.lease_id
    assert released.outcome == scheduler_pb2.OUTCOME_NODE_ERROR
    assert _shapes(fake) == [(1, 0), (0, 1)]
