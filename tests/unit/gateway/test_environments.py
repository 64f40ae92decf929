"""Environments through the admin API of the real app: every tenant has a ``production`` one,
keys belong to one, bad input is a clear 400, a duplicate name 409; migration 0003 gives the
tenants and keys of older data their production environment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import asyncpg

from tests.unit.gateway.conftest import Gateway


async def _new_tenant(gateway: Gateway, email: str = "env@example.com") -> str:
    status, tenant = await gateway.admin("POST", "/admin/tenants", {"name": "E", "email": email})
    assert status == 201, tenant
    return str(tenant["id"])


async def test_a_tenant_is_made_with_a_production_environment_that_keys_default_to(
    gateway: Gateway,
) -> None:
    tenant_id = await _new_tenant(gateway)
    status, listing = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    assert status == 200
    [production] = listing["data"]
    assert production["name"] == "production" and production["status"] == "active"
    assert production["tenant_id"] == tenant_id
    assert production["id"].startswith("env_")
    assert [production[f] for f in ("region", "models", "tpm_limit", "tokens_per_day")] == [
        None
    ] * 4

    status, key = await gateway.admin("POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k"})
    assert status == 201
    assert key["environment_id"] == production["id"]
    assert key["role"] == "developer"
    assert key["expires_at"] is None and key["concurrency_limit"] is None


async def test_environments_are_created_listed_and_changed(gateway: Gateway) -> None:
    tenant_id = await _new_tenant(gateway)
    body = {
        "name": "staging",
        "region": "us-east",
        "models": ["m-1", "m-2", "m-1"],
        "tpm_limit": 1000,
        "tokens_per_day": 50_000,
        "concurrency_limit": 3,
    }
    status, env = await gateway.admin("POST", f"/admin/tenants/{tenant_id}/environments", body)
    assert status == 201, env
    assert {k: env[k] for k in body} == {**body, "models": ["m-1", "m-2"]}
    assert env["status"] == "active"

    status, listing = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    assert [e["name"] for e in listing["data"]] == ["production", "staging"]

    changes = {"status": "suspended", "models": None, "tokens_per_day": 10, "name": "stage"}
    status, changed = await gateway.admin("PATCH", f"/admin/environments/{env['id']}", changes)
    assert status == 200, changed
    assert {k: changed[k] for k in changes} == changes
    assert changed["region"] == "us-east" and changed["concurrency_limit"] == 3  # untouched

    status, audit = await gateway.admin("GET", "/admin/audit?limit=3")
    rows = [(e["method"], e["path"], e["status"]) for e in reversed(audit["data"])]
    assert rows[0] == ("POST", f"/admin/tenants/{tenant_id}/environments", 201)
    assert rows[2] == ("PATCH", f"/admin/environments/{env['id']}", 200)
    assert audit["data"][0]["detail"]["tenant_id"] == tenant_id


async def test_bad_environment_input_gets_a_clear_error(gateway: Gateway) -> None:
    tenant_id = await _new_tenant(gateway)
    other_id = await _new_tenant(gateway, "other@example.com")
    path = f"/admin/tenants/{tenant_id}/environments"

    status, error = await gateway.admin("POST", path, {"name": "production"})
    assert status == 409 and error["error"]["param"] == "name"
    for body, param in [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x", "region": "a/b"}, "region"),
        ({"name": "x", "models": "m"}, "models"),
        ({"name": "x", "models": [""]}, "models.0"),
        ({"name": "x", "tpm_limit": 0}, "tpm_limit"),
        ({"name": "x", "tokens_per_day": -1}, "tokens_per_day"),
        ({"name": "x", "concurrency_limit": "2"}, "concurrency_limit"),
        ({"name": "x", "colour": "red"}, "colour"),
    ]:
        status, error = await gateway.admin("POST", path, body)
        assert status == 400, (body, error)
        assert error["error"]["param"] == param, (body, error)
        assert set(error["error"]) == {"message", "type", "param", "code"}

    status, _ = await gateway.admin("POST", "/admin/tenants/ten_nope/environments", {"name": "x"})
    assert status == 404
    status, _ = await gateway.admin("PATCH", "/admin/environments/env_nope", {"status": "active"})
    assert status == 404
    status, envs = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    production = envs["data"][0]["id"]
    status, error = await gateway.admin(
        "PATCH", f"/admin/environments/{production}", {"status": None}
    )
    assert status == 400 and error["error"]["param"] == "status"

    # A key goes only into an environment of its own tenant.
    _, theirs = await gateway.admin("GET", f"/admin/tenants/{other_id}/environments")
    status, error = await gateway.admin(
        "POST",
        f"/admin/tenants/{tenant_id}/keys",
        {"name": "k", "environment_id": theirs["data"][0]["id"]},
    )
    assert status == 400 and error["error"]["param"] == "environment_id"


async def test_keys_take_an_environment_a_role_an_expiry_and_a_concurrency_limit(
    gateway: Gateway,
) -> None:
    tenant_id = await _new_tenant(gateway)
    _, env = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/environments", {"name": "dev"}
    )
    expires = datetime.now(UTC) + timedelta(days=30)
    body = {
        "name": "ops",
        "environment_id": env["id"],
        "role": "admin",
        "expires_at": expires.isoformat(),
        "concurrency_limit": 4,
        "rpm_limit": 60,
    }
    status, key = await gateway.admin("POST", f"/admin/tenants/{tenant_id}/keys", body)
    assert status == 201, key
    assert key["key"].startswith("sk-cic-")
    assert datetime.fromisoformat(key["expires_at"]) == expires
    shown = {k: key[k] for k in ("environment_id", "role", "concurrency_limit", "rpm_limit")}
    assert shown == {
        "environment_id": env["id"],
        "role": "admin",
        "concurrency_limit": 4,
        "rpm_limit": 60,
    }

    status, listing = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/keys")
    [listed] = listing["data"]
    assert "key" not in listed
    assert {k: listed[k] for k in shown} == shown

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"expires_at": past}, "expires_at"),
        ({"expires_at": "next tuesday"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),  # past year 9999 in UTC
        ({"role": "owner"}, "role"),
        ({"role": None}, "role"),
        ({"concurrency_limit": 0}, "concurrency_limit"),
    ]
    for bad, param in cases:
        status, error = await gateway.admin(
            "POST", f"/admin/tenants/{tenant_id}/keys", {"name": "k", **bad}
        )
        assert status == 400, (bad, error)
        assert error["error"]["param"] == param, (bad, error)


def _migration(name: str) -> str:
    return files("cic_gateway.migrations").joinpath(name).read_text()


async def test_migration_0003_gives_older_tenants_and_keys_their_production_environment(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA old; SET search_path TO old")
        await conn.execute(_migration("0001_tenants_keys_audit.sql"))
        await conn.execute(_migration("0002_dashboard.sql"))
        await conn.execute(
            "INSERT INTO tenants (id, name, email) VALUES ('ten_a', 'A', 'a@x.io'),"
            " ('ten_b', 'B', 'b@x.io');"
            " INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash) VALUES"
            " ('key_a', 'ten_a', 'k', 'sk-cic-aaaaa', decode(repeat('aa', 32), 'hex')),"
            " ('key_b', 'ten_b', 'k', 'sk-cic-bbbbb', decode(repeat('bb', 32), 'hex'))"
        )
        await conn.execute(_migration("0003_environments.sql"))

        envs = await conn.fetch("SELECT id, tenant_id, name FROM environments ORDER BY tenant_id")
        assert [(e["tenant_id"], e["name"]) for e in envs] == [
            ("ten_a", "production"),
            ("ten_b", "production"),
        ]
        keys = await conn.fetch(
            "SELECT k.id, k.role, e.tenant_id FROM api_keys k"
            " JOIN environments e ON e.id = k.environment_id ORDER BY k.id"
        )
        assert [(k["id"], k["role"], k["tenant_id"]) for k in keys] == [
            ("key_a", "developer", "ten_a"),
            ("key_b", "developer", "ten_b"),
        ]
        # Tenants and keys made afterwards get (and default to) a production environment too.
        await conn.execute("INSERT INTO tenants (id, name, email) VALUES ('ten_c', 'C', 'c@x.io')")
        env_c = await conn.fetchval("SELECT id FROM environments WHERE tenant_id = 'ten_c'")
        await conn.execute(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash) VALUES"
            " ('key_c', 'ten_c', 'k', 'sk-cic-ccccc', decode(repeat('cc', 32), 'hex'))"
        )
        assert (
            await conn.fetchval("SELECT environment_id FROM api_keys WHERE id = 'key_c'") == env_c
        )
        # A key cannot belong to another tenant's environment.
        try:
            await conn.execute(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, environment_id)"
                " VALUES ('key_x', 'ten_a', 'k', 'sk-cic-xxxxx', decode(repeat('dd', 32), 'hex'),"
                " $1)",
                env_c,
            )
        except asyncpg.ForeignKeyViolationError:
            pass
        else:
            raise AssertionError("a key went into another tenant's environment")
    finally:
        await conn.close()
