"""The gateway's own tables in Postgres (schema ``gateway``): tenants, API keys, audit log."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


class DuplicateEmail(Exception):
    pass


def new_id(kind: str) -> str:
    """``ten_…``, ``key_…``: 96 random bits, hex."""
    return f"{kind}_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class EnvironmentAuth:
    """What a tenant request needs to know about its key's environment."""

    id: str = ""
    name: str = "production"
    status: str = "active"
    region: str = ""
    # The models its keys may call; None: every model.
    models: frozenset[str] | None = None
    tpm_limit: int | None = None
    tokens_per_day: int | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True, slots=True)
class KeyAuth:
    """What a tenant request needs to know about the key it carries."""

    key_id: str
    tenant_id: str
    tenant_status: str
    revoked: bool
    rpm_limit: int | None
    tpm_limit: int | None
    tenant_rpm_limit: int | None
    tenant_tpm_limit: int | None
    role: str = "developer"
    # Seconds since the epoch after which the key fails like a revoked one (None: never).
    expires_at: float | None = None
    concurrency_limit: int | None = None
    environment: EnvironmentAuth = EnvironmentAuth()


def _tenant(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row)


async def create_tenant(pool: asyncpg.Pool, name: str, email: str) -> dict[str, Any]:
    try:
        row = await pool.fetchrow(
            "INSERT INTO tenants (id, name, email) VALUES ($1, $2, $3)"
            " RETURNING id, name, email, status, rpm_limit, tpm_limit, created_at",
            new_id("ten"),
            name,
            email,
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateEmail(email) from None
    assert row is not None
    return _tenant(row)


async def list_tenants(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, name, email, status, rpm_limit, tpm_limit, created_at"
        " FROM tenants ORDER BY created_at, id"
    )
    return [_tenant(r) for r in rows]


async def get_tenant(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any] | None:
    if "\x00" in tenant_id:  # no such id can exist: Postgres text holds no NUL character
        return None
    row = await pool.fetchrow(
        "SELECT id, name, email, status, rpm_limit, tpm_limit, created_at"
        " FROM tenants WHERE id = $1",
        tenant_id,
    )
    return None if row is None else _tenant(row)


async def update_tenant(
    pool: asyncpg.Pool, tenant_id: str, changes: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Sets those of ``status``, ``rpm_limit`` and ``tpm_limit`` that ``changes`` holds."""
    row = await pool.fetchrow(
        "UPDATE tenants SET"
        " status = CASE WHEN $2 THEN $3 ELSE status END,"
        " rpm_limit = CASE WHEN $4 THEN $5 ELSE rpm_limit END,"
        " tpm_limit = CASE WHEN $6 THEN $7 ELSE tpm_limit END,"
        " updated_at = now()"
        " WHERE id = $1"
        " RETURNING id, name, email, status, rpm_limit, tpm_limit, created_at",
        tenant_id,
        "status" in changes,
        changes.get("status"),
        "rpm_limit" in changes,
        changes.get("rpm_limit"),
        "tpm_limit" in changes,
        changes.get("tpm_limit"),
    )
    return None if row is None else _tenant(row)


_KEY_COLUMNS = (
    "id, tenant_id, environment_id, name, prefix, role, rpm_limit, tpm_limit, concurrency_limit,"
    " expires_at, created_at, revoked_at, last_used_at"
)


async def create_key(
    pool: asyncpg.Pool,
    tenant_id: str,
    name: str,
    prefix: str,
    key_hash: bytes,
    rpm_limit: int | None,
    tpm_limit: int | None,
    *,
    environment_id: str | None = None,
    role: str = "developer",
    expires_at: datetime | None = None,
    concurrency_limit: int | None = None,
) -> dict[str, Any]:
    """A new key; without ``environment_id`` it belongs to the tenant's production environment
    (a trigger of migration 0003 picks it)."""
    row = await pool.fetchrow(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, rpm_limit, tpm_limit,"  # noqa: S608 (constant column names)
        " environment_id, role, expires_at, concurrency_limit)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        f" RETURNING {_KEY_COLUMNS}",
        new_id("key"),
        tenant_id,
        name,
        prefix,
        key_hash,
        rpm_limit,
        tpm_limit,
        environment_id,
        role,
        expires_at,
        concurrency_limit,
    )
    assert row is not None
    return dict(row)


async def list_keys(pool: asyncpg.Pool, tenant_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",  # noqa: S608 (constant column names)
        tenant_id,
    )
    return [dict(r) for r in rows]


async def revoke_key(
    pool: asyncpg.Pool, key_id: str, tenant_id: str | None = None
) -> dict[str, Any] | None:
    """Marks the key revoked (keeping the first revocation time); None when the id is unknown
    (or, with ``tenant_id``, belongs to another tenant)."""
    if "\x00" in key_id:  # no such id can exist: Postgres text holds no NUL character
        return None
    row = await pool.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"  # noqa: S608 (constant column names)
        " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
        f" RETURNING {_KEY_COLUMNS}",
        key_id,
        tenant_id,
    )
    return None if row is None else dict(row)


async def find_key(pool: asyncpg.Pool, key_hash: bytes) -> KeyAuth | None:
    row = await pool.fetchrow(
        "SELECT k.id, k.tenant_id, t.status, k.revoked_at IS NOT NULL AS revoked,"
        " k.rpm_limit, k.tpm_limit, t.rpm_limit AS tenant_rpm, t.tpm_limit AS tenant_tpm,"
        " k.role, k.expires_at, k.concurrency_limit,"
        " e.id AS env_id, e.name AS env_name, e.status AS env_status, e.region AS env_region,"
        " e.models AS env_models, e.tpm_limit AS env_tpm, e.tokens_per_day AS env_tpd,"
        " e.concurrency_limit AS env_concurrency"
        " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
        " JOIN environments e ON e.id = k.environment_id WHERE k.key_hash = $1",
        key_hash,
    )
    if row is None:
        return None
    models = row["env_models"]
    return KeyAuth(
        key_id=row["id"],
        tenant_id=row["tenant_id"],
        tenant_status=row["status"],
        revoked=row["revoked"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        tenant_rpm_limit=row["tenant_rpm"],
        tenant_tpm_limit=row["tenant_tpm"],
        role=row["role"],
        expires_at=None if row["expires_at"] is None else row["expires_at"].timestamp(),
        concurrency_limit=row["concurrency_limit"],
        environment=EnvironmentAuth(
            id=row["env_id"],
            name=row["env_name"],
            status=row["env_status"],
            region=row["env_region"] or "",
            models=None if models is None else frozenset(models),
            tpm_limit=row["env_tpm"],
            tokens_per_day=row["env_tpd"],
            concurrency_limit=row["env_concurrency"],
        ),
    )


async def write_audit(
    pool: asyncpg.Pool,
    *,
    actor: str,
    method: str,
    path: str,
    status: int,
    source: str | None,
    detail: Mapping[str, Any],
) -> None:
    await pool.execute(
        "INSERT INTO audit_log (actor, method, path, status, source, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        actor,
        method,
        path,
        status,
        source,
        orjson.dumps(_without_nul(dict(detail))).decode(),
    )


def _without_nul(value: Any) -> Any:
    """``value`` with every NUL character replaced: jsonb cannot hold one (an id a caller sent
    may have one)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(item) for item in value]
    return value


async def list_audit(pool: asyncpg.Pool, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, at, actor, method, path, status, source, detail::text AS detail"
        " FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
        limit,
    )
    return [{**dict(r), "detail": orjson.loads(r["detail"])} for r in rows]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
