"""Revocations reach every replica through Redis pub/sub, well before the key cache expires:
two gateways share Postgres and Redis; a change made through one is seen at once by the other."""

import asyncio

import pytest
from redis.asyncio import Redis

from cic_gateway.resources import REVOCATIONS
from tests.unit.gateway.conftest import Gateway, StartGateway

PROMPTLY_S = 1.0  # the key cache keeps entries for 5 s: anything faster is pub/sub's doing


@pytest.fixture
async def replicas(start_gateway: StartGateway, redis_prefix: str) -> tuple[Gateway, Gateway]:
    return (
        await start_gateway(REDIS_KEY_PREFIX=redis_prefix),
        await start_gateway(REDIS_KEY_PREFIX=redis_prefix),
    )


async def status_of(gateway: Gateway, key: str) -> int:
    """What the replica says to the key (``GET /v1/models`` needs nothing but a valid key)."""
    async with gateway.session.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status


async def answers_promptly(gateway: Gateway, key: str, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROMPTLY_S
    while (status := await status_of(gateway, key)) != expected:
        assert loop.time() < deadline, f"still {status} after {PROMPTLY_S}s"
        await asyncio.sleep(0.01)


def invalidations(gateway: Gateway, kind: str) -> float:
    name = "cic_gateway_key_cache_invalidations_total"
    return gateway.registry.get_sample_value(name, {"kind": kind}) or 0.0


async def test_a_key_revoked_on_one_replica_fails_on_the_other_at_once(
    replicas: tuple[Gateway, Gateway],
) -> None:
    one, other = replicas
    _, key_id, key = await one.new_key()
    assert await status_of(other, key) == 200  # now in the other replica's cache
    status, _ = await one.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    await answers_promptly(other, key, 401)
    assert invalidations(other, "key") >= 1


async def test_a_tenant_suspended_on_one_replica_is_refused_on_the_other_at_once(
    replicas: tuple[Gateway, Gateway],
) -> None:
    one, other = replicas
    tenant_id, _, key = await one.new_key()
    assert await status_of(other, key) == 200
    status, _ = await one.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"})
    assert status == 200
    await answers_promptly(other, key, 403)
    status, _ = await one.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "active"})
    await answers_promptly(other, key, 200)
    assert invalidations(other, "tenant") >= 2


async def test_the_subscriber_reconnects_after_redis_drops_it(
    replicas: tuple[Gateway, Gateway],
    redis_url: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one, other = replicas
    _, key_id, key = await one.new_key()
    assert await status_of(other, key) == 200
    caplog.set_level("INFO", logger="cic_gateway.revocation")

    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        clients = await admin.client_list()
        ours = [c["id"] for c in clients if c.get("name") == f"{redis_prefix}revocations"]
        assert ours, "the subscribers name their connections"
        for client_id in ours:
            await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()

    # Back on the channel, each replica empties its cache (it may have missed messages).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while invalidations(other, "all") < 1 or invalidations(one, "all") < 1:
        assert loop.time() < deadline, "the subscribers never came back"
        await asyncio.sleep(0.02)
    assert other.app[REVOCATIONS].subscribed.is_set()

    status, _ = await one.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    await answers_promptly(other, key, 401)
    lost = [r for r in caplog.records if "revocation channel lost" in r.getMessage()]
    assert len(lost) == 2  # once per replica, not once per retry


async def test_a_malformed_message_is_ignored(
    replicas: tuple[Gateway, Gateway], redis_url: str
) -> None:
    one, other = replicas
    _, key_id, key = await one.new_key()
    assert await status_of(other, key) == 200
    publisher = Redis.from_url(redis_url)
    try:
        channel = other.app[REVOCATIONS].channel
        for junk in (b"not json", b"[1, 2]", b'{"key_id": 7}'):
            await publisher.publish(channel, junk)
    finally:
        await publisher.aclose()
    status, _ = await one.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    await answers_promptly(other, key, 401)


async def test_revoking_with_redis_down_still_revokes_on_this_replica(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(REDIS_URL="redis://127.0.0.1:1/0")
    _, key_id, key = await gateway.new_key()
    assert await status_of(gateway, key) == 200
    status, _ = await gateway.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    assert await status_of(gateway, key) == 401
