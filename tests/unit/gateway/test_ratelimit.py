"""The rate-limit script's semantics against a real Redis: the exact boundary, all-or-nothing
across buckets, token reservations settled with real usage, and honest Retry-After values."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic_gateway.errors import ApiError
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.ratelimit import Limits, RateLimiter, Reservation, create_rate_limiter_redis
from cic_gateway.store import KeyAuth

HOUR_S = 3600.0  # a long window: capacity comes back too slowly to blur exact counts
NO_DEFAULTS = Limits()


def key_auth(
    key_rpm: int | None = None,
    key_tpm: int | None = None,
    tenant_rpm: int | None = None,
    tenant_tpm: int | None = None,
    key_id: str = "key_a",
    tenant_id: str = "ten_a",
) -> KeyAuth:
    return KeyAuth(
        key_id=key_id,
        tenant_id=tenant_id,
        tenant_status="active",
        revoked=False,
        rpm_limit=key_rpm,
        tpm_limit=key_tpm,
        tenant_rpm_limit=tenant_rpm,
        tenant_tpm_limit=tenant_tpm,
    )


MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture
async def make_limiter(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeLimiter]:
    made: list[RateLimiter] = []

    def make(
        *,
        url: str = redis_url,
        window_s: float = 60.0,
        defaults: Limits = NO_DEFAULTS,
        fail_open: bool = True,
        timeout_s: float = 1.0,
        registry: CollectorRegistry | None = None,
        lease_s: float = 60.0,
    ) -> RateLimiter:
        limiter = RateLimiter(
            create_rate_limiter_redis(url, timeout_s),
            GatewayMetrics(registry or CollectorRegistry()),
            prefix=redis_prefix,
            defaults=defaults,
            fail_open=fail_open,
            timeout_s=timeout_s,
            window_s=window_s,
            lease_s=lease_s,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def tokens(n: int) -> Callable[[], int]:
    return lambda: n


async def refused(limiter: RateLimiter, auth: KeyAuth, cost: int = 0) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await limiter.acquire(auth, tokens(cost))
    assert caught.value.status == 429
    return caught.value


def metric(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_the_rpm_limit_admits_exactly_the_limit_then_refuses(
    make_limiter: MakeLimiter,
) -> None:
    registry = CollectorRegistry()
    limiter = make_limiter(registry=registry)
    auth = key_auth(key_rpm=5)
    remaining = []
    for _ in range(5):
        reservation = await limiter.acquire(auth, tokens(0))
        remaining.append(reservation.headers["x-ratelimit-remaining-requests"])
        assert reservation.headers["x-ratelimit-limit-requests"] == "5"
        assert "x-ratelimit-limit-tokens" not in reservation.headers
    assert remaining == ["4", "3", "2", "1", "0"]

    error = await refused(limiter, auth)
    # One request frees up every 60/5 = 12 s; the bucket drained a few ms since it filled.
    assert error.headers["Retry-After"] == "12"
    assert 11_000 < int(error.headers["retry-after-ms"]) <= 12_000
    assert error.type == "requests" and error.code == "rate_limit_exceeded"
    assert "API key on requests per min (RPM): Limit 5" in error.message
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    labels = {"scope": "key", "kind": "requests"}
    assert metric(registry, "cic_gateway_rate_limited_total", labels) == 1


async def test_concurrent_requests_never_get_past_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    auth = key_auth(key_rpm=20)

    async def one() -> bool:
        try:
            await limiter.acquire(auth, tokens(0))
        except ApiError:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(60)))
    assert results.count(True) == 20


async def test_a_refused_request_takes_nothing_from_any_bucket(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    tight_tenant = key_auth(key_rpm=10, key_tpm=1000, tenant_rpm=3)
    for _ in range(3):
        await limiter.acquire(tight_tenant, tokens(100))
    error = await refused(limiter, tight_tenant, cost=100)
    assert "tenant on requests per min (RPM): Limit 3" in error.message

    # Without the tenant's limit, the key's buckets show the refused request took nothing.
    reservation = await limiter.acquire(key_auth(key_rpm=10, key_tpm=1000), tokens(100))
    assert reservation.headers["x-ratelimit-remaining-requests"] == "6"  # 10 - 3 - this one
    assert reservation.headers["x-ratelimit-remaining-tokens"] == "600"

    # A request refused on tokens takes no request either.
    error = await refused(limiter, key_auth(key_rpm=10, key_tpm=1000), cost=700)
    assert error.type == "tokens" and "API key on tokens per min (TPM)" in error.message
    reservation = await limiter.acquire(key_auth(key_rpm=10), tokens(0))
    assert reservation.headers["x-ratelimit-remaining-requests"] == "5"


async def test_a_tenant_limit_is_shared_by_all_its_keys(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    first, second = (key_auth(tenant_rpm=4, key_id=k) for k in ("key_a", "key_b"))
    for auth in (first, second, first, second):
        await limiter.acquire(auth, tokens(0))
    await refused(limiter, first)
    await refused(limiter, second)
    # Another tenant is not affected.
    await limiter.acquire(key_auth(tenant_rpm=4, tenant_id="ten_b"), tokens(0))


async def test_headers_describe_the_tightest_applicable_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    reservation = await limiter.acquire(
        key_auth(key_rpm=10, tenant_rpm=3, key_tpm=500, tenant_tpm=5000), tokens(40)
    )
    headers = reservation.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "500"
    assert headers["x-ratelimit-remaining-tokens"] == "460"
    # One request of three per hour takes 20 minutes to leak away; 40 of 500 tokens, 4m48s.
    assert headers["x-ratelimit-reset-requests"] in ("20m0s", "19m59.999s")
    assert headers["x-ratelimit-reset-tokens"] in ("4m48s", "4m47.999s")


async def test_tokens_are_reserved_then_settled_with_the_real_usage(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    auth = key_auth(key_tpm=1000, tenant_tpm=2000)
    reservation = await limiter.acquire(auth, tokens(600))
    assert reservation.headers["x-ratelimit-remaining-tokens"] == "400"

    reservation.add_usage(80, 20)  # the node used 100 of the 600 reserved
    limiter.settle_soon(reservation)
    limiter.settle_soon(reservation)  # settling twice gives back once
    await limiter.wait_settled()
    probe = await limiter.acquire(auth, tokens(0))
    assert probe.headers["x-ratelimit-remaining-tokens"] == "900"

    # Using more than reserved is charged, and can push the bucket over: the next request waits
    # until the excess has leaked away (1000 tokens an hour: 3.6 s each).
    reservation = await limiter.acquire(auth, tokens(100))
    reservation.add_usage(500, 500)
    limiter.settle_soon(reservation)
    await limiter.wait_settled()
    error = await refused(limiter, auth, cost=1)
    assert error.type == "tokens"
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["Retry-After"] == str(round(101 * 3.6))  # 1100 + 1 - 1000 tokens


async def test_a_request_that_reached_no_node_gives_its_tokens_back(
    make_limiter: MakeLimiter, redis_url: str, redis_prefix: str
) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    auth = key_auth(key_rpm=10, key_tpm=1000)
    reservation = await limiter.acquire(auth, tokens(300))
    limiter.settle_soon(reservation)  # no usage reported
    await limiter.wait_settled()
    probe = await limiter.acquire(auth, tokens(0))
    assert probe.headers["x-ratelimit-remaining-tokens"] == "1000"
    assert probe.headers["x-ratelimit-remaining-requests"] == "8"  # requests stay counted
    # An empty bucket is deleted rather than kept at zero.
    client = Redis.from_url(redis_url)
    try:
        assert not await client.exists(f"{redis_prefix}rl:{{ten_a}}:key:key_a:tokens")
    finally:
        await client.aclose()


async def test_an_estimate_above_the_whole_limit_waits_for_an_empty_bucket(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(window_s=HOUR_S)
    auth = key_auth(key_tpm=100)
    reservation = await limiter.acquire(auth, tokens(5000))
    assert reservation.headers["x-ratelimit-remaining-tokens"] == "0"
    assert reservation.token_buckets[0].cost == 100
    await refused(limiter, auth, cost=5000)


async def test_retry_after_is_long_enough(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(window_s=1.0)  # 5 a second: one more every 200 ms
    auth = key_auth(key_rpm=5)
    for _ in range(5):
        await limiter.acquire(auth, tokens(0))
    error = await refused(limiter, auth)
    wait_ms = int(error.headers["retry-after-ms"])
    assert 0 < wait_ms <= 200
    await asyncio.sleep(wait_ms / 1000)
    await limiter.acquire(auth, tokens(0))


async def test_buckets_live_under_the_prefix_and_expire(
    make_limiter: MakeLimiter, redis_url: str, redis_prefix: str
) -> None:
    limiter = make_limiter()
    await limiter.acquire(key_auth(key_rpm=5, key_tpm=50, tenant_rpm=7, tenant_tpm=70), tokens(9))
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        found = sorted([k async for k in client.scan_iter(match=f"{redis_prefix}*")])
        ttls = [await client.pttl(k) for k in found]
    finally:
        await client.aclose()
    base = f"{redis_prefix}rl:{{ten_a}}:"
    assert found == [
        base + "key:key_a:requests",
        base + "key:key_a:tokens",
        base + "tenant:requests",
        base + "tenant:tokens",
    ]
    # Each expires once it would be empty (12 s, 10.8 s, 8.6 s, 7.7 s) plus a second.
    assert all(0 < ttl <= 13_000 for ttl in ttls), ttls


async def test_settings_defaults_apply_when_a_row_has_no_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(defaults=Limits(key_rpm=2, tenant_tpm=50))
    reservation = await limiter.acquire(key_auth(), tokens(10))
    assert reservation.headers["x-ratelimit-limit-requests"] == "2"
    assert reservation.headers["x-ratelimit-limit-tokens"] == "50"
    # A row's own limit wins over the default.
    own = await limiter.acquire(key_auth(key_rpm=9, key_id="key_b"), tokens(10))
    assert own.headers["x-ratelimit-limit-requests"] == "9"


async def test_without_any_limit_redis_is_not_asked(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(url="redis://127.0.0.1:1/0", fail_open=False)
    estimated: list[int] = []

    def estimate() -> int:
        estimated.append(1)
        return 10

    reservation = await limiter.acquire(key_auth(), estimate)
    assert reservation == Reservation() and estimated == []


async def test_redis_down_fails_open_counts_and_logs_once(
    make_limiter: MakeLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    limiter = make_limiter(url="redis://127.0.0.1:1/0", fail_open=True, registry=registry)
    caplog.set_level("WARNING", logger="cic_gateway.ratelimit")
    auth = key_auth(key_rpm=1, key_tpm=10)
    for _ in range(10):
        reservation = await limiter.acquire(auth, tokens(5))
        assert reservation.headers == {}
        reservation.add_usage(1, 1)
        limiter.settle_soon(reservation)
    await limiter.wait_settled()
    errors = "cic_gateway_ratelimit_errors_total"
    assert metric(registry, errors, {"operation": "check"}) == 10
    assert metric(registry, errors, {"operation": "settle"}) == 0  # nothing was reserved
    warnings = [r for r in caplog.records if r.name == "cic_gateway.ratelimit"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "serving without rate limits" in warnings[0].getMessage()


async def test_redis_down_fails_closed_with_503(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(url="redis://127.0.0.1:1/0", fail_open=False)
    for _ in range(3):
        with pytest.raises(ApiError) as caught:
            await limiter.acquire(key_auth(key_rpm=100), tokens(0))
        assert caught.value.status == 503


async def test_a_redis_that_never_answers_costs_the_timeout_at_most(
    make_limiter: MakeLimiter,
) -> None:
    held: list[Any] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # reads everything, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        limiter = make_limiter(url=f"redis://127.0.0.1:{port}/0", fail_open=False, timeout_s=0.2)
        with pytest.raises(ApiError) as caught:
            await limiter.acquire(key_auth(key_rpm=100), tokens(0))
        assert caught.value.status == 503
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_slot_given_back_while_redis_is_left_alone_is_free_again(
    make_limiter: MakeLimiter,
) -> None:
    """After a Redis failure the limiter leaves Redis alone for a moment; a request that ends
    then still gives its concurrency slot back, instead of holding it for a whole lease."""
    limiter = make_limiter(lease_s=60.0)
    auth = dataclasses.replace(key_auth(), concurrency_limit=1)
    reservation = await limiter.acquire(auth, tokens(0))
    await refused(limiter, auth)
    limiter._paused_until = limiter._clock() + 0.2  # what a failed call to Redis sets
    limiter.settle_soon(reservation)
    await limiter.wait_settled()
    await asyncio.sleep(0.25)
    again = await limiter.acquire(auth, tokens(0))
    assert again.slots, "admitted with its slot, not unlimited"
    limiter.settle_soon(again)
