"""Rate limits through the real app: OpenAI's 429 and headers, settlement with the node's usage on
every path, limits from the admin API and from settings, and Redis down (open or closed)."""

import asyncio
import secrets
from typing import Any

import openai
import orjson
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from cic.scheduler.v1 import scheduler_pb2
from cic_gateway.resources import LIMITER
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.fakes import EMBED_MODEL, FakeServices
from tests.unit.gateway.upstream import FakeNode

MESSAGES = [{"role": "user", "content": "one two three"}]  # 4 + 13 bytes: 5 tokens estimated
CLOSED_REDIS = "redis://127.0.0.1:1/0"
RATE_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


@pytest.fixture
async def gateway(
    start_gateway: StartGateway, services: FakeServices, node: FakeNode, redis_prefix: str
) -> Gateway:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    return await start_gateway(REDIS_KEY_PREFIX=redis_prefix)


async def limited_key(gateway: Gateway, **limits: int) -> tuple[str, str, str]:
    """A fresh tenant with one key of the given limits: (tenant id, key id, key)."""
    status, tenant = await gateway.admin(
        "POST", "/admin/tenants", {"name": "T", "email": f"t-{secrets.token_hex(6)}@example.com"}
    )
    assert status == 201, tenant
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant['id']}/keys", {"name": "k", **limits}
    )
    assert status == 201, key
    return tenant["id"], key["id"], key["key"]


async def chat(
    gateway: Gateway, key: str, **fields: Any
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, **fields}
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as resp:
        raw = await resp.read()
        parsed = orjson.loads(raw) if resp.content_type == "application/json" else {}
        return resp.status, resp.headers.copy(), parsed


async def token_level(redis_url: str, prefix: str, tenant_id: str, key_id: str) -> float:
    """The tokens a key's bucket holds (as of its last update)."""
    client = Redis.from_url(redis_url)
    try:
        level = await client.hget(f"{prefix}rl:{{{tenant_id}}}:key:{key_id}:tokens", "level")
    finally:
        await client.aclose()
    return float(level) if level is not None else 0.0


def sample(gateway: Gateway, name: str, labels: dict[str, str]) -> float:
    return gateway.registry.get_sample_value(name, labels) or 0.0


async def test_over_the_limit_is_openais_429_and_the_node_is_never_asked(
    gateway: Gateway,
) -> None:
    _, _, key = await limited_key(gateway, rpm_limit=2)
    first, second = await chat(gateway, key), await chat(gateway, key)
    assert (first[0], second[0]) == (200, 200)
    assert first[1]["x-ratelimit-limit-requests"] == "2"
    assert (
        first[1]["x-ratelimit-remaining-requests"],
        second[1]["x-ratelimit-remaining-requests"],
    ) == ("1", "0")

    status, headers, body = await chat(gateway, key)
    assert status == 429
    assert body["error"]["type"] == "requests"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] is None
    assert "API key on requests per min (RPM): Limit 2" in body["error"]["message"]
    assert headers["Retry-After"] == "30"  # one request frees up every 60/2 s
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-request-id"].startswith("req_")
    # The refused request never reaches the node (a node asked for alongside the check is
    # given straight back: test_a_refused_request_gives_back_the_node_asked_for_...).
    assert len(gateway.node.bodies) == 2
    limited = {"scope": "key", "kind": "requests"}
    assert sample(gateway, "cic_gateway_rate_limited_total", limited) == 1


async def test_the_openai_sdk_raises_rate_limit_error(gateway: Gateway) -> None:
    _, _, key = await limited_key(gateway, tpm_limit=20)
    async with openai.AsyncOpenAI(
        api_key=key, base_url=f"{gateway.url}/v1", max_retries=0
    ) as client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "tokens"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_streams_and_successes_carry_the_headers(gateway: Gateway) -> None:
    _, _, key = await limited_key(gateway, rpm_limit=10, tpm_limit=1000)
    status, headers, _ = await chat(gateway, key, stream=True, max_tokens=20)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - 5 - 20)
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert all(name in headers for name in RATE_HEADERS)


async def test_a_key_without_limits_gets_no_rate_limit_headers(gateway: Gateway) -> None:
    _, _, key = await limited_key(gateway)
    status, headers, _ = await chat(gateway, key)
    assert status == 200
    assert not [name for name in headers if name.lower().startswith("x-ratelimit")]


async def test_the_reservation_is_settled_with_the_nodes_usage(
    gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    tenant_id, key_id, key = await limited_key(gateway, tpm_limit=60)  # leaks 1 token a second
    status, _, body = await chat(gateway, key, max_tokens=40)
    assert status == 200 and body["usage"]["total_tokens"] == 3 + 40
    await gateway.app[LIMITER].wait_settled()
    # 45 reserved (5 estimated + 40), 43 used: the bucket holds 43, less what leaked since.
    assert 41 < await token_level(redis_url, redis_prefix, tenant_id, key_id) <= 43


async def test_a_client_gone_mid_stream_is_charged_what_the_node_produced(
    gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    gateway.node.hold_after = 2  # then waits for ever
    tenant_id, key_id, key = await limited_key(gateway, tpm_limit=60)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 50, "stream": True}
    resp = await gateway.session.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200
    seen = b""
    while seen.count(b"\n\n") < 2:
        seen += await resp.content.readany()
    resp.close()
    await asyncio.wait_for(gateway.node.abort_seen.wait(), timeout=10)
    await gateway.services.billing.wait_for_events(1)
    await gateway.app[LIMITER].wait_settled()
    # 55 reserved; the node produced 3 prompt + 2 completion tokens.
    assert 3 < await token_level(redis_url, redis_prefix, tenant_id, key_id) <= 5


async def test_a_request_that_found_no_node_gives_its_tokens_back(
    gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    gateway.services.scheduler.add_node("cold", "cold-model", gateway.node.endpoint, ready=False)
    tenant_id, key_id, key = await limited_key(gateway, tpm_limit=60)
    status, headers, _ = await chat(gateway, key, model="cold-model")
    assert status == 503
    assert headers["x-ratelimit-remaining-tokens"] == str(60 - 10)  # reserved while it tried
    await gateway.app[LIMITER].wait_settled()
    assert await token_level(redis_url, redis_prefix, tenant_id, key_id) == 0


async def test_tenant_limits_set_through_the_admin_api_apply_at_once(gateway: Gateway) -> None:
    tenant_id, _, key = await limited_key(gateway)
    assert (await chat(gateway, key))[0] == 200  # now cached without limits
    status, _ = await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"rpm_limit": 1})
    assert status == 200
    status, headers, _ = await chat(gateway, key)
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "1"
    status, _, body = await chat(gateway, key)
    assert status == 429
    assert "tenant on requests per min (RPM): Limit 1" in body["error"]["message"]


async def test_default_limits_from_settings_apply_to_keys_without_their_own(
    start_gateway: StartGateway, services: FakeServices, node: FakeNode, redis_prefix: str
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway(
        REDIS_KEY_PREFIX=redis_prefix, DEFAULT_KEY_RPM="1", DEFAULT_TENANT_TPM="1000"
    )
    _, _, key = await limited_key(gateway)
    status, headers, _ = await chat(gateway, key)
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "1000"
    assert (await chat(gateway, key))[0] == 429
    _, _, own = await limited_key(gateway, rpm_limit=5)
    assert [(await chat(gateway, own))[0] for _ in range(2)] == [200, 200]


async def test_redis_down_fails_open_by_default(
    start_gateway: StartGateway,
    services: FakeServices,
    node: FakeNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway(REDIS_URL=CLOSED_REDIS)
    _, _, key = await limited_key(gateway, rpm_limit=1)
    caplog.set_level("WARNING", logger="cic_gateway.ratelimit")
    results = [await chat(gateway, key) for _ in range(4)]
    assert [status for status, _, _ in results] == [200] * 4
    assert not [h for _, headers, _ in results for h in headers if h.startswith("x-ratelimit")]
    errors = {"operation": "check"}
    assert sample(gateway, "cic_gateway_ratelimit_errors_total", errors) == 4
    assert len([r for r in caplog.records if r.name == "cic_gateway.ratelimit"]) == 1


async def test_redis_down_fails_closed_when_configured(
    start_gateway: StartGateway, services: FakeServices, node: FakeNode
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway(REDIS_URL=CLOSED_REDIS, RATE_LIMIT_FAIL_OPEN="false")
    _, _, limited = await limited_key(gateway, rpm_limit=100)
    status, _, body = await chat(gateway, limited)
    assert status == 503 and body["error"]["code"] == "service_unavailable"
    assert gateway.services.scheduler.picks == []
    _, _, unlimited = await limited_key(gateway)  # nothing to check: served
    assert (await chat(gateway, unlimited))[0] == 200


async def test_embeddings_reserve_their_input_only(gateway: Gateway) -> None:
    gateway.services.scheduler.add_node("node-e", EMBED_MODEL, gateway.node.endpoint)
    _, _, key = await limited_key(gateway, tpm_limit=100)
    async with gateway.session.post(
        gateway.url + "/v1/embeddings",
        json={"model": EMBED_MODEL, "input": "abcd" * 5},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["x-ratelimit-remaining-tokens"] == "95"


async def test_models_listing_is_not_rate_limited(gateway: Gateway) -> None:
    _, _, key = await limited_key(gateway, rpm_limit=1)
    for _ in range(3):
        async with gateway.session.get(
            gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 200


async def test_a_refused_request_gives_back_the_node_asked_for_alongside_the_check(
    gateway: Gateway,
) -> None:
    """The node is picked while the limits are checked; a 429 gives that lease straight back,
    and the tenant's next requests within the wait are checked before any pick."""
    fake = gateway.services.scheduler
    _, _, key = await limited_key(gateway, rpm_limit=1)
    assert (await chat(gateway, key))[0] == 200
    picks_before = len(fake.picks)
    assert (await chat(gateway, key))[0] == 429
    releases = await fake.wait_for_releases(2)
    assert len(fake.picks) == picks_before + 1  # asked for alongside the check
    refused = [r for r in releases if r.outcome == scheduler_pb2.OUTCOME_CLIENT_ERROR]
    assert len(refused) == 1 and (refused[0].prompt_tokens, refused[0].completion_tokens) == (0, 0)
    for _ in range(3):
        assert (await chat(gateway, key))[0] == 429
    # Another tenant's request: its pick travels behind any the refused requests made.
    _, _, other = await limited_key(gateway, rpm_limit=5)
    assert (await chat(gateway, other))[0] == 200
    assert len(fake.picks) == picks_before + 2  # within the wait: refused without a pick
