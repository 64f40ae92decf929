"""The dashboard's rows in Postgres: sign-in links, sessions and spent invite codes. Secrets are
kept only as SHA-256 hashes; every query about keys is scoped by the signed-in tenant."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from cic_gateway import store


def digest(secret: str) -> bytes:
    """Sign-in tokens, session ids and invite codes are random or operator-chosen strings: a
    plain SHA-256 is what is stored and looked up."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    tenant_id: str
    email: str
    csrf_token: str
    method: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SpentLink:
    email: str
    invite_hash: bytes | None


async def tenant_id_by_email(pool: asyncpg.Pool, email: str) -> str | None:
    value = await pool.fetchval("SELECT id FROM tenants WHERE lower(email) = lower($1)", email)
    return None if value is None else str(value)


async def save_link(
    pool: asyncpg.Pool, token: str, email: str, invite: str | None, ttl_s: int
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM dashboard_sign_in_links WHERE expires_at < now()")
        await conn.execute(
            "INSERT INTO dashboard_sign_in_links (token_hash, email, invite_hash, expires_at)"
            " VALUES ($1, $2, $3, now() + $4::interval)",
            digest(token),
            email,
            None if invite is None else digest(invite),
            timedelta(seconds=ttl_s),
        )


async def spend_link(pool: asyncpg.Pool, token: str) -> SpentLink | None:
    """Marks the link used and returns it; None when it is unknown, used or expired (a link
    works once, even when two requests race for it)."""
    row = await pool.fetchrow(
        "UPDATE dashboard_sign_in_links SET used_at = now()"
        " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()"
        " RETURNING email, invite_hash",
        digest(token),
    )
    return None if row is None else SpentLink(row["email"], row["invite_hash"])


async def invite_spent(pool: asyncpg.Pool, code: str) -> bool:
    found = await pool.fetchval(
        "SELECT 1 FROM dashboard_invite_uses WHERE code_hash = $1", digest(code)
    )
    return found is not None


async def create_tenant_for(
    pool: asyncpg.Pool, email: str, invite_hash: bytes | None
) -> str | None:
    """A new tenant for ``email`` (spending the invite, if one is given); None when the invite
    was spent meanwhile. A tenant made for the same email at the same moment is returned."""
    try:
        tenant = await store.create_tenant(pool, email.split("@", 1)[0] or email, email)
    except store.DuplicateEmail:
        return await tenant_id_by_email(pool, email)
    if invite_hash is not None:
        spent = await pool.execute(
            "INSERT INTO dashboard_invite_uses (code_hash, tenant_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            invite_hash,
            tenant["id"],
        )
        if spent.endswith(" 0"):
            await pool.execute("DELETE FROM tenants WHERE id = $1", tenant["id"])
            return None
    return str(tenant["id"])


async def create_session(
    pool: asyncpg.Pool,
    session_id: str,
    tenant_id: str,
    email: str,
    csrf_token: str,
    method: str,
    ttl_s: int,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM dashboard_sessions WHERE expires_at < now()")
        await conn.execute(
            "INSERT INTO dashboard_sessions (id_hash, tenant_id, email, csrf_token, method,"
            " expires_at) VALUES ($1, $2, $3, $4, $5, now() + $6::interval)",
            digest(session_id),
            tenant_id,
            email,
            csrf_token,
            method,
            timedelta(seconds=ttl_s),
        )


async def find_session(pool: asyncpg.Pool, session_id: str) -> Session | None:
    row = await pool.fetchrow(
        "SELECT tenant_id, email, csrf_token, method, expires_at FROM dashboard_sessions"
        " WHERE id_hash = $1 AND expires_at > now()",
        digest(session_id),
    )
    return None if row is None else Session(**dict(row))


async def delete_session(pool: asyncpg.Pool, session_id: str) -> None:
    await pool.execute("DELETE FROM dashboard_sessions WHERE id_hash = $1", digest(session_id))


async def delete_sessions_of(pool: asyncpg.Pool, tenant_id: str, email: str) -> int:
    done = await pool.execute(
        "DELETE FROM dashboard_sessions WHERE tenant_id = $1 AND lower(email) = lower($2)",
        tenant_id,
        email,
    )
    return int(done.rsplit(" ", 1)[1])


async def tenant_key(pool: asyncpg.Pool, tenant_id: str, key_id: str) -> dict[str, Any] | None:
    """The tenant's key with this id; None for another tenant's key or an unknown id."""
    if "\x00" in key_id:  # Postgres text holds no NUL: no such key
        return None
    row = await pool.fetchrow(
        "SELECT id, revoked_at FROM api_keys WHERE id = $1 AND tenant_id = $2", key_id, tenant_id
    )
    return None if row is None else dict(row)
