"""Key roles, expiry, environment suspension and allowed models through the real app: what each
role may call (models, the tenant's own keys API, usage), the official SDK's exceptions, keys that
expire, and an environment suspended on one replica stopping its keys on another at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from cic_gateway.errors import ApiError
from cic_gateway.keys import ADMIN, READ_ONLY, require_role
from cic_gateway.store import KeyAuth
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.sdk import KINDS, Sdk

PROMPTLY_S = 1.0  # the key cache keeps entries for 5 s: anything faster is pub/sub's doing
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def call(
    gateway: Gateway, key: str, method: str, path: str, json: Any = None
) -> tuple[int, Any]:
    async with gateway.session.request(
        method, gateway.url + path, json=json, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def add_key(gateway: Gateway, tenant_id: str, **fields: Any) -> dict[str, Any]:
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k", **fields}
    )
    assert status == 201, key
    return dict(key)


async def production_of(gateway: Gateway, tenant_id: str) -> str:
    _, listing = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    return str(listing["data"][0]["id"])


def forbidden(status: int, body: Any, code: str) -> None:
    assert status == 403, body
    assert body["error"]["type"] == "permission_error", body
    assert body["error"]["code"] == code, body


async def test_each_role_calls_what_it_may_and_gets_403_for_the_rest(gateway: Gateway) -> None:
    tenant_id, _, developer = await gateway.new_key()
    admin = (await add_key(gateway, tenant_id, role="admin"))["key"]
    read_only = (await add_key(gateway, tenant_id, role="read-only"))["key"]

    for key in (admin, developer):
        status, body = await call(gateway, key, "POST", "/v1/chat/completions", CHAT)
        assert status == 200, body
    status, body = await call(gateway, read_only, "POST", "/v1/chat/completions", CHAT)
    forbidden(status, body, "insufficient_role")
    assert "'read-only'" in body["error"]["message"]
    status, body = await call(gateway, read_only, "POST", "/v1/embeddings", {"model": MODEL})
    forbidden(status, body, "insufficient_role")

    for key in (developer, read_only):
        for method, path in [
            ("GET", "/v1/api-keys"),
            ("POST", "/v1/api-keys"),
            ("DELETE", "/v1/api-keys/key_x"),
        ]:
            status, body = await call(gateway, key, method, path, {"name": "x"})
            forbidden(status, body, "insufficient_role")
    status, body = await call(gateway, admin, "GET", "/v1/api-keys")
    assert status == 200 and len(body["data"]) == 3


def test_require_role_is_the_check_for_any_tenant_route() -> None:
    def auth(role: str) -> KeyAuth:
        return KeyAuth("key_a", "ten_a", "active", False, None, None, None, None, role=role)

    require_role(auth("read-only"), ADMIN, READ_ONLY)  # e.g. GET /v1/usage
    require_role(auth("admin"), ADMIN, READ_ONLY)
    with pytest.raises(ApiError) as caught:
        require_role(auth("developer"), ADMIN, READ_ONLY)
    assert (caught.value.status, caught.value.type) == (403, "permission_error")
    assert caught.value.code == "insufficient_role"


async def test_an_admin_key_manages_its_own_tenants_keys_only(gateway: Gateway) -> None:
    tenant_id, _, admin = await gateway.new_key(role="admin")
    other_tenant, other_key_id, other_key = await gateway.new_key()
    _, staging = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "staging"}
    )

    body = {"name": "nb", "environment_id": staging["id"], "role": "developer", "rpm_limit": 5}
    status, created = await call(gateway, admin, "POST", "/v1/api-keys", body)
    assert status == 201, created
    assert created["key"].startswith("sk-cic-") and created["tenant_id"] == tenant_id
    assert created["environment_id"] == staging["id"] and created["rpm_limit"] == 5
    status, answer = await call(gateway, created["key"], "POST", "/v1/chat/completions", CHAT)
    assert status == 200, answer

    status, listing = await call(gateway, admin, "GET", "/v1/api-keys")
    assert status == 200
    assert {k["id"] for k in listing["data"]} >= {created["id"]}
    assert all(k["tenant_id"] == tenant_id and "key" not in k for k in listing["data"])
    assert other_key_id not in {k["id"] for k in listing["data"]}

    # Another tenant's environment or key is not this tenant's to use.
    _, theirs = await gateway.admin("GET", f"/admin/tenants/{other_tenant}/environments")
    theirs_id = theirs["data"][0]["id"]
    status, error = await call(
        gateway, admin, "POST", "/v1/api-keys", {"name": "x", "environment_id": theirs_id}
    )
    assert status == 400 and error["error"]["param"] == "environment_id"
    status, error = await call(gateway, admin, "DELETE", f"/v1/api-keys/{other_key_id}")
    assert status == 404, error
    status, _ = await call(gateway, other_key, "POST", "/v1/chat/completions", CHAT)
    assert status == 200

    status, _ = await call(gateway, admin, "DELETE", f"/v1/api-keys/{created['id']}")
    assert status == 204
    status, error = await call(gateway, created["key"], "POST", "/v1/chat/completions", CHAT)
    assert status == 401 and error["error"]["code"] == "invalid_api_key"

    status, audit = await gateway.admin("GET", "/admin/audit?limit=50")
    mine = [e for e in audit["data"] if e["actor"].startswith("key:")]
    assert [(e["method"], e["status"], e["detail"]["key_id"]) for e in reversed(mine)] == [
        ("POST", 201, created["id"]),
        ("DELETE", 204, created["id"]),
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_openai_sdk_raises_permission_denied_for_a_wrong_role(
    gateway: Gateway, kind: str
) -> None:
    tenant_id, _, developer = await gateway.new_key()
    read_only = (await add_key(gateway, tenant_id, role="read-only"))["key"]

    reader = Sdk(kind, f"{gateway.url}/v1", read_only)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await reader.run(lambda c: c.chat.completions.create(**CHAT))
    assert caught.value.status_code == 403
    assert caught.value.code == "insufficient_role"

    dev = Sdk(kind, f"{gateway.url}/v1", developer)
    with pytest.raises(openai.PermissionDeniedError):
        await dev.run(lambda c: c.get("/api-keys", cast_to=object))


async def test_expired_keys_fail_like_revoked_ones(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    later = datetime.now(UTC) + timedelta(hours=1)
    lasting = (await add_key(gateway, tenant_id, expires_at=later.isoformat()))["key"]
    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiring = (await add_key(gateway, tenant_id, expires_at=soon.isoformat()))["key"]

    status, _ = await call(gateway, lasting, "POST", "/v1/chat/completions", CHAT)
    assert status == 200
    # Once past its time the key fails, however long it stays in the key cache.
    deadline = asyncio.get_running_loop().time() + 15
    while (status := (await call(gateway, expiring, "GET", "/v1/models"))[0]) != 401:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.05)
    status, error = await call(gateway, expiring, "POST", "/v1/chat/completions", CHAT)
    assert status == 401 and error["error"]["code"] == "invalid_api_key"


async def answers_promptly(gateway: Gateway, key: str, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROMPTLY_S
    while (status := (await call(gateway, key, "GET", "/v1/models"))[0]) != expected:
        assert loop.time() < deadline, f"still {status} after {PROMPTLY_S}s"
        await asyncio.sleep(0.01)


async def test_an_environment_suspended_on_one_replica_stops_its_keys_on_the_other(
    start_gateway: StartGateway, redis_prefix: str
) -> None:
    one = await start_gateway(REDIS_KEY_PREFIX=redis_prefix)
    other = await start_gateway(REDIS_KEY_PREFIX=redis_prefix)
    tenant_id, _, key = await one.new_key()
    _, staging = await one.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "staging"}
    )
    staging_key = (await add_key(one, tenant_id, environment_id=staging["id"]))["key"]
    production = await production_of(one, tenant_id)
    for k in (key, staging_key):
        assert (await call(other, k, "GET", "/v1/models"))[0] == 200  # cached there now

    status, _ = await one.admin(
        "PATCH", f"/admin/environments/{production}", {"status": "suspended"}
    )
    assert status == 200
    await answers_promptly(other, key, 403)
    status, error = await call(other, key, "POST", "/v1/chat/completions", CHAT)
    forbidden(status, error, "environment_suspended")
    assert "'production'" in error["error"]["message"]
    assert (await call(other, staging_key, "GET", "/v1/models"))[0] == 200  # another environment

    status, _ = await one.admin("PATCH", f"/admin/environments/{production}", {"status": "active"})
    await answers_promptly(other, key, 200)
    name = "cic_gateway_key_cache_invalidations_total"
    assert (other.registry.get_sample_value(name, {"kind": "environment"}) or 0) >= 2


async def test_a_suspended_tenant_stops_every_environments_keys(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    _, staging = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "staging"}
    )
    staging_key = (await add_key(gateway, tenant_id, environment_id=staging["id"]))["key"]
    await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"})
    for k in (key, staging_key):
        status, error = await call(gateway, k, "POST", "/v1/chat/completions", CHAT)
        forbidden(status, error, "tenant_suspended")
    await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "active"})
    for k in (key, staging_key):
        assert (await call(gateway, k, "POST", "/v1/chat/completions", CHAT))[0] == 200


async def test_allowed_models_region_and_environment_reach_the_node_and_billing(
    gateway: Gateway,
) -> None:
    tenant_id, _, key = await gateway.new_key()
    production = await production_of(gateway, tenant_id)
    changes = {"models": ["other-model"], "region": "eu-west"}
    status, _ = await gateway.admin("PATCH", f"/admin/environments/{production}", changes)
    assert status == 200
    status, error = await call(gateway, key, "POST", "/v1/chat/completions", CHAT)
    forbidden(status, error, "model_not_allowed")
    assert error["error"]["param"] == "model"
    assert f"'{MODEL}'" in error["error"]["message"] and "'production'" in error["error"]["message"]

    changes = {"models": [MODEL, "other-model"]}
    await gateway.admin("PATCH", f"/admin/environments/{production}", changes)
    status, _ = await call(gateway, key, "POST", "/v1/chat/completions", CHAT)
    assert status == 200
    assert gateway.services.scheduler.regions[-1] == "eu-west"
    [event] = await gateway.services.billing.wait_for_events(1)
    assert event.environment_id == production and event.tenant_id == tenant_id


async def test_a_model_outside_the_catalog_is_404_even_where_models_are_restricted(
    gateway: Gateway,
) -> None:
    """The catalog is asked first: a model that does not exist is 404 model_not_found, whatever
    the environment allows; only a model that exists but is not allowed is 403."""
    tenant_id, _, key = await gateway.new_key()
    production = await production_of(gateway, tenant_id)
    status, _ = await gateway.admin(
        "PATCH", f"/admin/environments/{production}", {"models": [MODEL]}
    )
    assert status == 200
    status, error = await call(
        gateway, key, "POST", "/v1/chat/completions", {**CHAT, "model": "no-such-model"}
    )
    assert status == 404, error
    assert error["error"]["code"] == "model_not_found" and error["error"]["param"] == "model"
    status, error = await call(
        gateway, key, "POST", "/v1/chat/completions", {**CHAT, "model": "cold-model"}
    )
    forbidden(status, error, "model_not_allowed")
    assert (await call(gateway, key, "POST", "/v1/chat/completions", CHAT))[0] == 200


async def test_an_unknown_route_under_the_keys_api_is_still_openai_shaped(
    gateway: Gateway,
) -> None:
    _, _, admin = await gateway.new_key(role="admin")
    status, body = await call(gateway, admin, "PUT", "/v1/api-keys")
    assert status == 405 and set(body["error"]) == {"message", "type", "param", "code"}


async def test_the_tenant_apis_changes_are_audited_with_the_calling_key_as_actor(
    gateway: Gateway,
) -> None:
    tenant_id, key_id, admin = await gateway.new_key(role="admin")
    status, made = await call(gateway, admin, "POST", "/v1/api-keys", {"name": "ci"})
    assert status == 201, made
    status, _ = await call(gateway, admin, "DELETE", f"/v1/api-keys/{made['id']}")
    assert status == 204
    body = {"type": "webhook", "target": "https://hooks.example.com/cic"}
    status, channel = await call(gateway, admin, "POST", "/v1/notification-channels", body)
    assert status == 201, channel

    _, audit = await gateway.admin("GET", "/admin/audit?limit=20")
    mine = [e for e in audit["data"] if e["actor"] == f"key:{key_id}"]
    assert [(e["method"], e["status"]) for e in reversed(mine)] == [
        ("POST", 201),
        ("DELETE", 204),
        ("POST", 201),
    ]
    assert all(e["detail"]["tenant_id"] == tenant_id for e in mine)
    assert mine[2]["detail"]["key_id"] == made["id"] == mine[1]["detail"]["key_id"]
    assert mine[0]["detail"]["channel_id"] == channel["id"]
