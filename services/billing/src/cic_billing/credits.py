"""Prepaid credits: grants of money to a tenant, drawn from as its usage is recorded.

Each newly recorded event's cost draws, in the transaction that records it, from its tenant's live
grants (remaining > 0 and not expired) oldest-expiring first (grants that never expire last, then
the oldest grant first). The grants are locked ``FOR UPDATE`` in one order (tenant, expiry,
creation, id), so ingestion on several billing replicas never draws more than a grant holds and
cannot deadlock. Each draw is a ``credit_draws`` row (request, grant, amount) and the event's
``credit_micro_usd`` is their sum: Stripe is sent the cost minus that
(:mod:`cic_billing.meter_store`).
A duplicate event is not inserted, so it draws nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

KINDS = ("sign_up", "promotional", "purchased")
DEFAULT_DRAWS_LIMIT = 100
MAX_DRAWS_LIMIT = 1000

_LOCK_LIVE_GRANTS = """
SELECT id, tenant_id, remaining_micro_usd FROM credit_grants
WHERE tenant_id = ANY($1::text[])
  AND remaining_micro_usd > 0 AND (expires_at IS NULL OR expires_at > now())
ORDER BY tenant_id, expires_at NULLS LAST, created_at, id
FOR UPDATE
"""

_WRITE_DRAWS = """
INSERT INTO credit_draws (request_id, grant_id, amount_micro_usd)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
"""

_SPEND_GRANTS = """
UPDATE credit_grants g SET remaining_micro_usd = g.remaining_micro_usd - d.amount
FROM unnest($1::text[], $2::bigint[]) AS d (id, amount)
WHERE g.id = d.id
"""

_COVER_EVENTS = """
UPDATE usage_events e SET credit_micro_usd = d.amount
FROM unnest($1::text[], $2::bigint[]) AS d (request_id, amount)
WHERE e.request_id = d.request_id
"""

BALANCE_SQL = """
SELECT coalesce(sum(remaining_micro_usd), 0)::bigint FROM credit_grants
WHERE tenant_id = $1 AND remaining_micro_usd > 0 AND (expires_at IS NULL OR expires_at > now())
"""


@dataclass(frozen=True, slots=True)
class Charge:
    """A newly recorded event's cost, to be drawn from its tenant's grants."""

    request_id: str
    tenant_id: str
    cost_micro_usd: int


@dataclass(frozen=True, slots=True)
class DrawResult:
    draws: int
    # Per tenant of the batch: its live balance after this batch's draws.
    balances: dict[str, int]


@dataclass(slots=True)
class _Live:
    id: str
    remaining: int


def new_grant_id() -> str:
    return "cr_" + secrets.token_hex(12)


async def draw(conn: asyncpg.Connection, charges: Sequence[Charge]) -> DrawResult:
    """Draws each charge (in the order given) from its tenant's live grants; inside the caller's
    transaction. A charge larger than the balance draws what is left; the rest is metered."""
    tenants = sorted({c.tenant_id for c in charges if c.cost_micro_usd > 0})
    if not tenants:
        return DrawResult(0, {})
    rows = await conn.fetch(_LOCK_LIVE_GRANTS, tenants)
    live: dict[str, list[_Live]] = {tenant: [] for tenant in tenants}
    for row in rows:
        live[row["tenant_id"]].append(_Live(row["id"], row["remaining_micro_usd"]))
    request_ids: list[str] = []
    grant_ids: list[str] = []
    amounts: list[int] = []
    spent: dict[str, int] = {}
    covered: dict[str, int] = {}
    for charge in charges:
        grants = live.get(charge.tenant_id)
        need = charge.cost_micro_usd
        while need > 0 and grants:
            grant = grants[0]
            take = min(need, grant.remaining)
            request_ids.append(charge.request_id)
            grant_ids.append(grant.id)
            amounts.append(take)
            spent[grant.id] = spent.get(grant.id, 0) + take
            covered[charge.request_id] = covered.get(charge.request_id, 0) + take
            need -= take
            grant.remaining -= take
            if grant.remaining == 0:
                grants.pop(0)
    if request_ids:
        await conn.execute(_WRITE_DRAWS, request_ids, grant_ids, amounts)
        await conn.execute(_SPEND_GRANTS, list(spent), list(spent.values()))
        await conn.execute(_COVER_EVENTS, list(covered), list(covered.values()))
    balances = {tenant: sum(g.remaining for g in grants) for tenant, grants in live.items()}
    return DrawResult(len(request_ids), balances)


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    tenant_id: str
    kind: str
    amount_micro_usd: int
    remaining_micro_usd: int
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DrawRow:
    request_id: str
    grant_id: str
    amount_micro_usd: int
    cost_micro_usd: int
    finished_at: datetime


async def insert_grant(
    conn: asyncpg.Connection,
    tenant_id: str,
    kind: str,
    amount_micro_usd: int,
    expires_at: datetime | None,
) -> Grant:
    row = await conn.fetchrow(
        "INSERT INTO credit_grants (id, tenant_id, kind, amount_micro_usd, remaining_micro_usd,"
        " expires_at) VALUES ($1, $2, $3, $4, $4, $5) RETURNING id, tenant_id, kind,"
        " amount_micro_usd, remaining_micro_usd, expires_at, created_at",
        new_grant_id(),
        tenant_id,
        kind,
        amount_micro_usd,
        expires_at,
    )
    assert row is not None
    return Grant(**dict(row))


async def list_grants(pool: asyncpg.Pool, tenant_id: str) -> tuple[list[Grant], int]:
    """The tenant's grants, newest first, and its live balance."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, tenant_id, kind, amount_micro_usd, remaining_micro_usd, expires_at,"
            " created_at FROM credit_grants WHERE tenant_id = $1"
            " ORDER BY created_at DESC, id",
            tenant_id,
        )
        balance = await conn.fetchval(BALANCE_SQL, tenant_id)
    return [Grant(**dict(r)) for r in rows], int(balance)


async def list_draws(
    pool: asyncpg.Pool, tenant_id: str, request_id: str | None, limit: int
) -> list[DrawRow]:
    rows = await pool.fetch(
        "SELECT d.request_id, d.grant_id, d.amount_micro_usd, e.cost_micro_usd, e.finished_at"
        " FROM credit_draws d JOIN usage_events e USING (request_id)"
        " JOIN credit_grants g ON g.id = d.grant_id"
        " WHERE g.tenant_id = $1 AND ($2::text IS NULL OR d.request_id = $2)"
        " ORDER BY e.finished_at DESC, d.request_id, g.expires_at NULLS LAST, g.created_at"
        " LIMIT $3",
        tenant_id,
        request_id,
        limit,
    )
    return [DrawRow(**dict(r)) for r in rows]
