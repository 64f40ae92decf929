"""Each layer of limits refusing through the real app, named in the 429's message and in its
``x-ratelimit-scope`` header: the key (requests per minute, concurrent requests), the environment
(tokens per day, concurrent requests), the tenant (requests per minute) and the platform
(``GLOBAL_RPM_LIMIT``, ``GLOBAL_TPM_LIMIT``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
STREAM = {**CHAT, "stream": True}


async def chat(gateway: Gateway, key: str, body: dict[str, Any] = CHAT) -> aiohttp.ClientResponse:
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        return resp


async def refused_by(
    gateway: Gateway, key: str, scope: str, words: str, body: dict[str, Any] = CHAT
) -> dict[str, Any]:
    resp = await chat(gateway, key, body)
    error = await resp.json()
    assert resp.status == 429, error
    assert resp.headers["x-ratelimit-scope"] == scope
    assert int(resp.headers["Retry-After"]) >= 1
    assert int(resp.headers["retry-after-ms"]) >= 1
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert words in error["error"]["message"], error
    return dict(error)


async def add_key(gateway: Gateway, tenant_id: str, **fields: Any) -> tuple[str, str]:
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k", **fields}
    )
    assert status == 201, key
    return key["id"], key["key"]


async def production_of(gateway: Gateway, tenant_id: str) -> str:
    _, listing = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    return str(listing["data"][0]["id"])


@asynccontextmanager
async def held_stream(gateway: Gateway, key: str) -> AsyncIterator[aiohttp.ClientResponse]:
    """A stream the node holds open after its first token until the block ends."""
    gateway.node.hold_after = 1
    gateway.node.resume.clear()
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions",
        json=STREAM,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        try:
            yield resp
        finally:
            gateway.node.resume.set()
        await resp.read()
    gateway.node.hold_after = None


async def admitted_soon(gateway: Gateway, key: str) -> None:
    """The slot a finished request held comes back (its release runs in the background)."""
    deadline = asyncio.get_running_loop().time() + 10
    while (resp := await chat(gateway, key)).status == 429:
        assert asyncio.get_running_loop().time() < deadline, "the slot never came back"
        await asyncio.sleep(0.02)
    assert resp.status == 200


async def test_the_key_layer_refuses_on_requests_per_minute(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    _, key = await add_key(gateway, tenant_id, rpm_limit=1)
    assert (await chat(gateway, key)).status == 200
    error = await refused_by(gateway, key, "key", "this API key on requests per min (RPM)")
    assert error["error"]["type"] == "requests"


async def test_the_key_layer_refuses_on_concurrent_requests(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    _, key = await add_key(gateway, tenant_id, concurrency_limit=1)
    _, neighbour = await add_key(gateway, tenant_id)
    async with held_stream(gateway, key):
        await refused_by(gateway, key, "key", "this API key on concurrent requests: Limit 1")
        assert (await chat(gateway, neighbour)).status == 200  # another key of the tenant
    await admitted_soon(gateway, key)


async def test_the_environment_layer_refuses_on_tokens_per_day(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    production = await production_of(gateway, tenant_id)
    await gateway.admin("PATCH", f"/admin/environments/{production}", {"tokens_per_day": 30})
    assert (await chat(gateway, key)).status == 200  # ~22 tokens reserved, 21 used
    _, sibling = await add_key(gateway, tenant_id)  # same environment, same quota
    error = await refused_by(
        gateway, sibling, "environment", "environment 'production' on tokens per day (TPD)"
    )
    assert error["error"]["type"] == "tokens"


async def test_the_environment_layer_refuses_on_concurrent_requests(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    production = await production_of(gateway, tenant_id)
    await gateway.admin("PATCH", f"/admin/environments/{production}", {"concurrency_limit": 1})
    _, sibling = await add_key(gateway, tenant_id)
    _, staging = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "staging"}
    )
    _, elsewhere = await add_key(gateway, tenant_id, environment_id=staging["id"])
    async with held_stream(gateway, key):
        await refused_by(
            gateway, sibling, "environment", "environment 'production' on concurrent requests"
        )
        assert (await chat(gateway, elsewhere)).status == 200  # another environment
    await admitted_soon(gateway, sibling)


async def test_the_tenant_layer_refuses_on_requests_per_minute(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"rpm_limit": 1})
    _, sibling = await add_key(gateway, tenant_id)
    assert (await chat(gateway, key)).status == 200
    await refused_by(gateway, sibling, "tenant", "this tenant on requests per min (RPM)")


async def test_the_global_ceiling_refuses_across_tenants(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(GLOBAL_RPM_LIMIT="2")
    gateway.services.scheduler.add_node("node-a", MODEL, gateway.node.endpoint)
    keys = [(await gateway.new_key())[2] for _ in range(3)]
    assert [(await chat(gateway, key)).status for key in keys[:2]] == [200, 200]
    await refused_by(gateway, keys[2], "global", "the platform on requests per min (RPM)")


async def test_the_global_token_ceiling_refuses_too(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(GLOBAL_TPM_LIMIT="30")
    gateway.services.scheduler.add_node("node-a", MODEL, gateway.node.endpoint)
    first, second = [(await gateway.new_key())[2] for _ in range(2)]
    resp = await chat(gateway, first)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-limit-tokens"] == "30"
    await refused_by(gateway, second, "global", "the platform on tokens per min (TPM)")
