"""Concurrency slots are given back on every path a request can end by — success (unary and
streamed), an upstream error, a failover, a node timeout, a client that goes away while waiting
and one that goes away mid-stream — so that afterwards no lease is left in Redis; and the leases
of a gateway that died run out on their own, while a live gateway keeps renewing its own."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from cic_gateway.errors import ApiError
from cic_gateway.ratelimit import RateLimiter
from cic_gateway.store import EnvironmentAuth, KeyAuth
from tests.unit.gateway.conftest import MODEL, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.test_ratelimit import MakeLimiter, key_auth, make_limiter, tokens
from tests.unit.gateway.upstream import FakeNode

__all__ = ["make_limiter"]  # the fixture, used below

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def leases(redis: Redis, prefix: str) -> dict[str, int]:
    """Every concurrency set under ``prefix`` and the leases it holds."""
    found = {}
    async for key in redis.scan_iter(match=f"{prefix}rl:*:concurrent", count=1000):
        found[key.decode()] = await redis.zcard(key)
    return {k: n for k, n in found.items() if n}


async def until_no_leases(redis: Redis, prefix: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while held := await leases(redis, prefix):
        assert asyncio.get_running_loop().time() < deadline, f"leases left: {held}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, FakeNode]]:
    made = {
        "failing": FakeNode(model=MODEL, mode="fail500"),
        "hanging": FakeNode(model=MODEL, mode="hang"),
        "holding": FakeNode(model=MODEL, hold_after=1),
    }
    for node in made.values():
        await node.start()
    yield made
    made["holding"].resume.set()
    for node in made.values():
        await node.stop()


def serve_from(services: FakeServices, **endpoints: str) -> None:
    services.scheduler.nodes = []
    for node_id, endpoint in endpoints.items():
        services.scheduler.add_node(node_id, MODEL, endpoint)


async def test_every_way_a_request_ends_gives_its_slots_back(
    start_gateway: StartGateway,
    services: FakeServices,
    node: FakeNode,
    nodes: dict[str, FakeNode],
    redis: Redis,
    redis_prefix: str,
) -> None:
    gateway = await start_gateway(UPSTREAM_READ_TIMEOUT_S="0.5")
    tenant_id, _, _ = await gateway.new_key()
    _, envs = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    production = envs["data"][0]["id"]
    await gateway.admin("PATCH", f"/admin/environments/{production}", {"concurrency_limit": 50})
    _, created = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k", "concurrency_limit": 50}
    )
    headers = {"Authorization": f"Bearer {created['key']}"}
    url = gateway.url + "/v1/chat/completions"

    async def status_of(body: dict[str, object], timeout_s: float | None = None) -> int:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with gateway.session.post(url, json=body, headers=headers, timeout=timeout) as resp:
            await resp.read()
            return resp.status

    serve_from(services, ok=node.endpoint)
    assert await status_of(CHAT) == 200
    assert await status_of({**CHAT, "stream": True}) == 200
    serve_from(services, failing=nodes["failing"].endpoint)
    assert await status_of(CHAT) == 502  # upstream error, no other node
    serve_from(services, failing=nodes["failing"].endpoint, ok=node.endpoint)
    assert await status_of(CHAT) == 200  # failed over
    serve_from(services, hanging=nodes["hanging"].endpoint)
    assert await status_of(CHAT) == 504  # node timed out
    with pytest.raises(TimeoutError):  # the client gives up while the node hangs
        await status_of(CHAT, timeout_s=0.2)

    serve_from(services, holding=nodes["holding"].endpoint)
    async with gateway.session.post(url, json={**CHAT, "stream": True}, headers=headers) as resp:
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        # The held stream is the one request in flight: one lease per limit, nothing else left.
        await until_only_one_lease_each(redis, redis_prefix)
        resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(nodes["holding"].abort_seen.wait(), 10)

    await until_no_leases(redis, redis_prefix)


async def until_only_one_lease_each(redis: Redis, prefix: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while sorted((held := await leases(redis, prefix)).values()) != [1, 1]:
        assert asyncio.get_running_loop().time() < deadline, f"leases: {held}"
        await asyncio.sleep(0.02)
    assert sorted(":key:" in k for k in held) == [False, True]  # the key's and the environment's


def limited(concurrency: int) -> KeyAuth:
    auth = key_auth()
    return dataclasses.replace(
        auth,
        concurrency_limit=concurrency,
        environment=EnvironmentAuth(id="env_a", concurrency_limit=concurrency + 1),
    )


async def refused(limiter: RateLimiter, auth: KeyAuth) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await limiter.acquire(auth, tokens(0))
    return caught.value


async def test_a_dead_gateways_leases_run_out_and_a_live_one_renews_its_own(
    make_limiter: MakeLimiter, redis: Redis, redis_prefix: str
) -> None:
    auth = limited(1)
    dead, other = make_limiter(lease_s=1.0), make_limiter(lease_s=1.0)
    live = make_limiter(lease_s=3.0)  # renewed every second

    await dead.acquire(auth, tokens(0))
    await dead.close()  # stops renewing without giving its lease back, as a crash would
    error = await refused(other, auth)
    assert error.status == 429 and error.headers["x-ratelimit-scope"] == "key"
    assert "concurrent requests" in error.message
    # The dead gateway's lease runs out (after about a second): the slot is free again.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            taken = await other.acquire(auth, tokens(0))
            break
        except ApiError:
            assert asyncio.get_running_loop().time() < deadline, "the lease never ran out"
            await asyncio.sleep(0.05)
    other.settle_soon(taken)
    await other.wait_settled()

    held = await live.acquire(auth, tokens(0))
    [key] = [k for k in await leases(redis, redis_prefix) if ":key:" in k]
    first_end = await redis.zscore(key, held.member)
    assert first_end is not None
    # Renewed while the request runs: its lease ends later and later, and the slot stays taken.
    deadline = asyncio.get_running_loop().time() + 10
    while (await redis.zscore(key, held.member) or 0.0) <= first_end:
        assert asyncio.get_running_loop().time() < deadline, "the lease was never renewed"
        await asyncio.sleep(0.05)
    assert (await refused(other, auth)).status == 429
    live.settle_soon(held)
    await live.wait_settled()
    assert await leases(redis, redis_prefix) == {}
