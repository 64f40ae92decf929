"""Admin API: the token guard, the audit log, tenants and keys (stored hashed)."""

import asyncio
import hashlib

import asyncpg

from tests.unit.gateway.conftest import ADMIN_TOKEN, Gateway, StartGateway


async def _audit_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT actor, method, path, status, source, detail::text AS detail"
            " FROM gateway.audit_log ORDER BY id"
        )
    finally:
        await conn.close()


async def test_missing_and_wrong_tokens_are_refused_and_audited(
    gateway: Gateway, database_url: str
) -> None:
    url = gateway.url + "/admin/tenants"
    async with gateway.session.get(url) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "invalid_admin_token"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    wrong = "w" * 40
    async with gateway.session.get(url, headers={"X-Admin-Token": wrong}) as resp:
        assert resp.status == 401
    async with gateway.session.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200
    async with gateway.session.get(gateway.url + "/admin/nope") as resp:
        assert resp.status == 401

    rows = await _audit_rows(database_url)
    assert [(r["method"], r["path"], r["status"]) for r in rows] == [
        ("GET", "/admin/tenants", 401),
        ("GET", "/admin/tenants", 401),
        ("GET", "/admin/tenants", 200),
        ("GET", "/admin/nope", 401),
    ]
    assert rows[0]["actor"] == "anonymous"
    assert rows[1]["actor"].startswith("invalid:")
    assert rows[2]["actor"] == "admin:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]
    assert rows[0]["source"] == "127.0.0.1"
    text = " ".join(str(dict(r)) for r in rows)
    assert ADMIN_TOKEN not in text and wrong not in text


async def test_tenant_lifecycle(gateway: Gateway) -> None:
    status, tenant = await gateway.admin(
        "POST", "/admin/tenants", {"name": "Acme", "email": "Ops@Acme.example"}
    )
    assert status == 201
    assert tenant["id"].startswith("ten_")
    assert {"id", "name", "email", "status", "created_at"} <= set(tenant)
    assert tenant["status"] == "active"

    status, dup = await gateway.admin(
        "POST", "/admin/tenants", {"name": "Other", "email": "ops@acme.EXAMPLE"}
    )
    assert status == 409 and dup["error"]["param"] == "email"

    status, listed = await gateway.admin("GET", "/admin/tenants")
    assert status == 200 and [t["id"] for t in listed["data"]] == [tenant["id"]]

    status, got = await gateway.admin("GET", f"/admin/tenants/{tenant['id']}")
    assert status == 200 and got == tenant

    status, patched = await gateway.admin(
        "PATCH", f"/admin/tenants/{tenant['id']}", {"status": "suspended", "rpm_limit": 60}
    )
    assert status == 200
    assert (patched["status"], patched["rpm_limit"], patched["tpm_limit"]) == (
        "suspended",
        60,
        None,
    )

    status, cleared = await gateway.admin(
        "PATCH", f"/admin/tenants/{tenant['id']}", {"rpm_limit": None}
    )
    assert status == 200 and cleared["rpm_limit"] is None and cleared["status"] == "suspended"

    status, missing = await gateway.admin("GET", "/admin/tenants/ten_nope")
    assert status == 404 and missing["error"]["type"] == "invalid_request_error"


async def test_bad_admin_bodies_are_400_with_the_field(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    cases = [
        ("POST", "/admin/tenants", {"name": "A"}, "email"),
        ("POST", "/admin/tenants", {"name": "A", "email": "not-an-email"}, "email"),
        ("POST", "/admin/tenants", {"name": "", "email": "a@b.example"}, "name"),
        ("POST", "/admin/tenants", {"name": "A", "email": "a@b.example", "x": 1}, "x"),
        ("PATCH", f"/admin/tenants/{tenant_id}", {"status": "deleted"}, "status"),
        ("PATCH", f"/admin/tenants/{tenant_id}", {"status": None}, "status"),
        ("PATCH", f"/admin/tenants/{tenant_id}", {"rpm_limit": 0}, "rpm_limit"),
        ("PATCH", f"/admin/tenants/{tenant_id}", {"tpm_limit": "many"}, "tpm_limit"),
        ("POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k", "rpm_limit": -1}, "rpm_limit"),
    ]
    for method, path, body, param in cases:
        status, answer = await gateway.admin(method, path, body)
        assert status == 400, (method, path, body, answer)
        assert answer["error"]["param"] == param, answer
        assert answer["error"]["message"]
    async with gateway.session.post(
        gateway.url + "/admin/tenants", data=b"{not json", headers=gateway.admin_headers()
    ) as resp:
        assert resp.status == 400
    async with gateway.session.post(
        gateway.url + "/admin/tenants", json=[1, 2], headers=gateway.admin_headers()
    ) as resp:
        assert resp.status == 400


async def test_keys_are_shown_once_and_stored_only_hashed(
    gateway: Gateway, database_url: str
) -> None:
    status, tenant = await gateway.admin(
        "POST", "/admin/tenants", {"name": "Acme", "email": "keys@acme.example"}
    )
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant['id']}/keys", {"name": "prod", "tpm_limit": 1000}
    )
    assert status == 201
    secret = key["key"]
    assert secret.startswith("sk-cic-") and len(secret) >= len("sk-cic-") + 43
    assert key["prefix"] == secret[:12]
    assert {"id", "key", "prefix", "name", "created_at"} <= set(key)

    status, listed = await gateway.admin("GET", f"/admin/tenants/{tenant['id']}/keys")
    assert status == 200
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert "key" not in listed["data"][0] and listed["data"][0]["tpm_limit"] == 1000

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM gateway.api_keys")
        audit = await conn.fetch("SELECT detail::text AS d FROM gateway.audit_log")
    finally:
        await conn.close()
    assert len(rows) == 1
    assert rows[0]["key_hash"] == hashlib.sha256(secret.encode()).digest()
    secret_part = secret[len("sk-cic-") :]
    for value in rows[0].values():
        assert secret_part not in str(value)
        assert not (isinstance(value, bytes) and secret.encode() in value)
    assert all(secret_part not in r["d"] for r in audit)

    status, _ = await gateway.admin("POST", "/admin/tenants/ten_nope/keys", {"name": "x"})
    assert status == 404


async def test_revoked_key_fails_at_once_on_this_replica(gateway: Gateway) -> None:
    _, key_id, key = await gateway.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200  # now cached
    status, _ = await gateway.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    status, wrong_method = await gateway.admin("GET", "/admin/keys/none")
    assert status == 405 and wrong_method["error"]["code"] == "method_not_allowed"
    status, _ = await gateway.admin("DELETE", "/admin/keys/key_unknown")
    assert status == 404


async def test_suspending_a_tenant_blocks_its_keys_at_once(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200
    await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"})
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "tenant_suspended"
    await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "active"})
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200


async def test_audit_route_lists_newest_first(gateway: Gateway) -> None:
    tenant_id, key_id, _ = await gateway.new_key()
    status, audit = await gateway.admin("GET", "/admin/audit?limit=2")
    assert status == 200
    entries = audit["data"]
    assert [(e["method"], e["path"]) for e in entries] == [
        ("POST", f"/admin/tenants/{tenant_id}/keys"),
        ("POST", "/admin/tenants"),
    ]
    assert entries[0]["detail"] == {"tenant_id": tenant_id, "key_id": key_id}
    assert entries[0]["actor"].startswith("admin:")
    for bad in ("0", "x", "100000", "%C2%B2", "9" * 5000):  # '²': str.isdigit(), not int()
        status, _ = await gateway.admin("GET", f"/admin/audit?limit={bad}")
        assert status == 400


async def test_revocation_reaches_another_replica_once_its_cache_expires(
    start_gateway: StartGateway,
) -> None:
    first = await start_gateway(KEY_CACHE_TTL_S="0.3")
    second = await start_gateway(KEY_CACHE_TTL_S="0.3")
    _, key_id, key = await first.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with second.session.get(second.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200  # now in the second replica's cache
    status, _ = await first.admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 204
    refused = False
    for _ in range(100):
        async with second.session.get(second.url + "/v1/models", headers=headers) as resp:
            if resp.status == 401:
                refused = True
                break
        await asyncio.sleep(0.05)
    assert refused
