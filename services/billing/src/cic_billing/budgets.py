"""Budgets: a tenant's or an environment's monthly hard limit and alert thresholds, and the
tenant's prepaid flag, with the spend of each calendar month (UTC) kept as counters.

Ingestion adds each batch's costs to the counters of every tenant and environment it touches
(one statement for the batch), in the transaction that records the events. A scope with a budget
whose spend passes an alert threshold this month gets that alert once (``alerted_pct``); one whose
spend reaches its limit, or a prepaid tenant whose live credit is spent, is *blocked*:
``budgets.blocked_reason`` says why, and :mod:`cic_billing.budget_state` mirrors every blocked
scope to Redis, where each gateway replica reads it.

:func:`recompute` is the one place that decides a scope's state: it locks the scopes' budget rows
(in one order), reads their spend and the tenants' balances afresh, and writes what changed.
Ingestion calls it for the scopes a batch may have blocked, the admin calls for the scope they
changed (a raised limit or a new grant unblocks), and the keeper for every budget (a new month or
an expired grant).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg

TENANT, ENVIRONMENT = "tenant", "environment"
MONTHLY_LIMIT, CREDIT_EXHAUSTED = "monthly_limit", "credit_exhausted"
MAX_THRESHOLD_PCT = 1000

Scope = tuple[str, str]  # (TENANT or ENVIRONMENT, its id)

_ADD_SPEND = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::bigint[])
        AS d (scope, scope_id, month, tenant_id, amount)
), up AS (
    INSERT INTO budget_spend AS s (scope, scope_id, month, tenant_id, spent_micro_usd)
    SELECT scope, scope_id, month, tenant_id, amount FROM d
    ON CONFLICT (scope, scope_id, month)
        DO UPDATE SET spent_micro_usd = s.spent_micro_usd + excluded.spent_micro_usd
    RETURNING s.scope, s.scope_id, s.month, s.tenant_id, s.spent_micro_usd, s.alerted_pct
)
SELECT up.scope, up.scope_id, up.month, up.tenant_id, up.spent_micro_usd, up.alerted_pct,
       d.amount, b.monthly_limit_micro_usd, b.alert_thresholds, b.prepaid, b.blocked_reason
FROM up JOIN d USING (scope, scope_id, month)
JOIN budgets b ON b.scope = up.scope AND b.scope_id = up.scope_id AND b.tenant_id = up.tenant_id
"""

_LOCK = """
SELECT b.scope, b.scope_id FROM budgets b
JOIN unnest($1::text[], $2::text[]) AS k (scope, scope_id) USING (scope, scope_id)
ORDER BY b.scope, b.scope_id
FOR UPDATE OF b
"""

_STATES = """
SELECT b.scope, b.scope_id, b.tenant_id, b.monthly_limit_micro_usd, b.prepaid, b.blocked_reason,
       coalesce(s.spent_micro_usd, 0)::bigint AS spent,
       CASE WHEN b.prepaid THEN
           (SELECT coalesce(sum(g.remaining_micro_usd), 0) FROM credit_grants g
            WHERE g.tenant_id = b.tenant_id AND g.remaining_micro_usd > 0
              AND (g.expires_at IS NULL OR g.expires_at > now()))
       END::bigint AS balance
FROM budgets b
JOIN unnest($1::text[], $2::text[]) AS k (scope, scope_id) USING (scope, scope_id)
LEFT JOIN budget_spend s ON s.scope = b.scope AND s.scope_id = b.scope_id AND s.month = $3
    AND s.tenant_id = b.tenant_id
"""

_SET_STATES = """
UPDATE budgets b SET blocked_reason = k.reason,
       blocked_since = CASE WHEN k.reason IS NULL THEN NULL ELSE now() END
FROM unnest($1::text[], $2::text[], $3::text[]) AS k (scope, scope_id, reason)
WHERE b.scope = k.scope AND b.scope_id = k.scope_id
"""


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def scope_key(scope: Scope) -> str:
    """The scope's name in Redis and in events: ``tenant:<id>`` or ``environment:<id>``."""
    return f"{scope[0]}:{scope[1]}"


@dataclass(frozen=True, slots=True)
class SpendDelta:
    scope: str
    scope_id: str
    month: date
    tenant_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Alert:
    scope: Scope
    tenant_id: str
    threshold_pct: int
    spent_micro_usd: int
    limit_micro_usd: int
    month: date


@dataclass(frozen=True, slots=True)
class Transition:
    """A scope that became blocked (``reason`` set) or was unblocked (``reason`` None)."""

    scope: Scope
    tenant_id: str
    reason: str | None
    spent_micro_usd: int
    limit_micro_usd: int | None
    balance_micro_usd: int | None
    month: date


@dataclass(slots=True)
class SpendOutcome:
    alerts: list[Alert] = field(default_factory=list)
    # Scopes this batch may have blocked (their state is recomputed under lock).
    candidates: set[Scope] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class BudgetRow:
    scope: Scope
    tenant_id: str
    monthly_limit_micro_usd: int | None
    alert_thresholds: list[int]
    prepaid: bool
    blocked_reason: str | None
    spent_micro_usd: int


def spend_deltas(records: Iterable[asyncpg.Record]) -> list[SpendDelta]:
    """The batch's costs summed per tenant, per environment and month, sorted (the counters'
    rows are then locked in one order by every batch)."""
    sums: dict[tuple[str, str, date, str], int] = {}
    for r in records:
        cost = r["cost_micro_usd"]
        if cost <= 0:
            continue
        tenant, month = r["tenant_id"], r["month"]
        key = (TENANT, tenant, month, tenant)
        sums[key] = sums.get(key, 0) + cost
        if r["environment_id"]:
            key = (ENVIRONMENT, r["environment_id"], month, tenant)
            sums[key] = sums.get(key, 0) + cost
    return [SpendDelta(*key, amount) for key, amount in sorted(sums.items())]


async def add_spend(
    conn: asyncpg.Connection,
    deltas: Sequence[SpendDelta],
    now: datetime,
    balances: dict[str, int],
) -> SpendOutcome:
    """Adds the deltas to the counters; answers the alerts due (recorded as sent) and the scopes
    to recompute: those whose spend reached their limit, and prepaid tenants whose balance
    (after this batch's draws, in ``balances``) is spent."""
    outcome = SpendOutcome()
    if not deltas:
        return outcome
    rows = await conn.fetch(
        _ADD_SPEND,
        [d.scope for d in deltas],
        [d.scope_id for d in deltas],
        [d.month for d in deltas],
        [d.tenant_id for d in deltas],
        [d.amount for d in deltas],
    )
    current = month_of(now)
    alerted: list[tuple[str, str, int]] = []
    for r in sorted(rows, key=lambda r: (r["scope"], r["scope_id"])):
        if r["month"] != current:
            continue  # a late event of a past month: that month is over
        scope: Scope = (r["scope"], r["scope_id"])
        limit, spent = r["monthly_limit_micro_usd"], r["spent_micro_usd"]
        if r["blocked_reason"] is None and (
            (limit is not None and spent >= limit)
            or (r["prepaid"] and balances.get(r["tenant_id"], 0) <= 0)
        ):
            outcome.candidates.add(scope)
        if not limit:
            continue
        due = [
            pct
            for pct in sorted(set(r["alert_thresholds"]))
            if pct > r["alerted_pct"] and spent * 100 >= pct * limit
        ]
        for pct in due:
            outcome.alerts.append(Alert(scope, r["tenant_id"], pct, spent, limit, current))
        if due:
            alerted.append((scope[0], scope[1], due[-1]))
    if alerted:
        await conn.execute(
            "UPDATE budget_spend s SET alerted_pct = greatest(s.alerted_pct, k.pct)"
            " FROM unnest($1::text[], $2::text[], $3::int[]) AS k (scope, scope_id, pct)"
            " WHERE s.scope = k.scope AND s.scope_id = k.scope_id AND s.month = $4",
            [a[0] for a in alerted],
            [a[1] for a in alerted],
            [a[2] for a in alerted],
            current,
        )
    return outcome


async def unmark_alerts(pool: asyncpg.Pool, alerts: Sequence[Alert]) -> None:
    """Forgets that ``alerts`` were sent (their event could not be published): each scope's
    alerted_pct goes back below its lowest of them, so the next batch that adds to the scope's
    spend alerts them again."""
    lowest: dict[tuple[str, str, date], int] = {}
    for a in alerts:
        key = (a.scope[0], a.scope[1], a.month)
        lowest[key] = min(lowest.get(key, a.threshold_pct), a.threshold_pct)
    if not lowest:
        return
    await pool.execute(
        "UPDATE budget_spend s SET alerted_pct = least(s.alerted_pct, k.pct - 1)"
        " FROM unnest($1::text[], $2::text[], $3::date[], $4::int[]) AS k (scope, scope_id,"
        " month, pct) WHERE s.scope = k.scope AND s.scope_id = k.scope_id AND s.month = k.month",
        [k[0] for k in lowest],
        [k[1] for k in lowest],
        [k[2] for k in lowest],
        list(lowest.values()),
    )


def _wanted_reason(row: asyncpg.Record) -> str | None:
    limit = row["monthly_limit_micro_usd"]
    if limit is not None and row["spent"] >= limit:
        return MONTHLY_LIMIT
    if row["prepaid"] and row["balance"] <= 0:
        return CREDIT_EXHAUSTED
    return None


async def recompute(
    conn: asyncpg.Connection, scopes: Iterable[Scope], now: datetime
) -> list[Transition]:
    """Decides the scopes' state afresh under their rows' locks (inside the caller's
    transaction) and writes what changed; answers the changes."""
    keys = sorted(set(scopes))
    if not keys:
        return []
    kinds, ids = [k[0] for k in keys], [k[1] for k in keys]
    await conn.fetch(_LOCK, kinds, ids)
    month = month_of(now)
    changes: list[Transition] = []
    for row in await conn.fetch(_STATES, kinds, ids, month):
        reason = _wanted_reason(row)
        if reason == row["blocked_reason"]:
            continue
        changes.append(
            Transition(
                scope=(row["scope"], row["scope_id"]),
                tenant_id=row["tenant_id"],
                reason=reason,
                spent_micro_usd=row["spent"],
                limit_micro_usd=row["monthly_limit_micro_usd"],
                balance_micro_usd=row["balance"],
                month=month,
            )
        )
    if changes:
        await conn.execute(
            _SET_STATES,
            [c.scope[0] for c in changes],
            [c.scope[1] for c in changes],
            [c.reason for c in changes],
        )
    return changes


async def all_scopes(conn: asyncpg.Connection) -> list[Scope]:
    """Every scope whose state may depend on the time: blocked ones (a new month, a limit
    changed), those with a limit and the prepaid tenants (an expired grant)."""
    rows = await conn.fetch(
        "SELECT scope, scope_id FROM budgets WHERE blocked_reason IS NOT NULL"
        " OR monthly_limit_micro_usd IS NOT NULL OR prepaid"
    )
    return [(r["scope"], r["scope_id"]) for r in rows]


async def blocked_scopes(conn: asyncpg.Connection) -> dict[str, str]:
    """``scope_key`` -> reason of every blocked scope."""
    rows = await conn.fetch(
        "SELECT scope, scope_id, blocked_reason FROM budgets WHERE blocked_reason IS NOT NULL"
    )
    return {scope_key((r["scope"], r["scope_id"])): r["blocked_reason"] for r in rows}


async def upsert_budget(
    conn: asyncpg.Connection,
    scope: Scope,
    tenant_id: str,
    limit_micro_usd: int | None,
    thresholds: Sequence[int],
    prepaid: bool,
) -> bool:
    """Creates or replaces the scope's budget; False (nothing written) when the scope is another
    tenant's: its budget, or spend counted for it, belongs to another tenant."""
    written = await conn.fetchval(
        "INSERT INTO budgets (scope, scope_id, tenant_id, monthly_limit_micro_usd,"
        " alert_thresholds, prepaid) SELECT $1, $2, $3, $4, $5, $6"
        " WHERE NOT EXISTS (SELECT 1 FROM budget_spend WHERE scope = $1 AND scope_id = $2"
        "   AND tenant_id <> $3)"
        " ON CONFLICT (scope, scope_id) DO UPDATE SET"
        " monthly_limit_micro_usd = excluded.monthly_limit_micro_usd,"
        " alert_thresholds = excluded.alert_thresholds, prepaid = excluded.prepaid,"
        " updated_at = now() WHERE budgets.tenant_id = excluded.tenant_id"
        " RETURNING true",
        scope[0],
        scope[1],
        tenant_id,
        limit_micro_usd,
        sorted(set(thresholds)),
        prepaid,
    )
    return bool(written)


async def rebase_alerts(
    conn: asyncpg.Connection,
    scope: Scope,
    tenant_id: str,
    limit_micro_usd: int | None,
    thresholds: Sequence[int],
    now: datetime,
) -> None:
    """Makes this month's ``alerted_pct`` the highest of ``thresholds`` that the spend has
    already passed under ``limit_micro_usd`` (0 when none), so that a budget set again alerts
    each threshold the spend crosses from now on: after a raised limit, alerted_pct kept from the
    old limit silenced the new limit's lower thresholds for the rest of the month. Call before
    :func:`upsert_budget`: the spend row is locked first, as ingestion does (spend, then budget).
    """
    await conn.execute(
        "UPDATE budget_spend s SET alerted_pct = coalesce((SELECT max(t) FROM unnest($5::int[]) t"
        "   WHERE $6::bigint IS NOT NULL AND $6::bigint > 0"
        "     AND s.spent_micro_usd::numeric * 100 >= t::numeric * $6::bigint), 0)"
        " WHERE s.scope = $1 AND s.scope_id = $2 AND s.month = $3 AND s.tenant_id = $4",
        scope[0],
        scope[1],
        month_of(now),
        tenant_id,
        sorted(set(thresholds)),
        limit_micro_usd,
    )


async def read_budget(
    conn: asyncpg.Connection | asyncpg.Pool,
    scope: Scope,
    tenant_id: str,
    now: datetime | None = None,
) -> BudgetRow | None:
    """The scope's budget, if it is ``tenant_id``'s."""
    row = await conn.fetchrow(
        "SELECT b.tenant_id, b.monthly_limit_micro_usd, b.alert_thresholds, b.prepaid,"
        " b.blocked_reason, coalesce(s.spent_micro_usd, 0)::bigint AS spent"
        " FROM budgets b LEFT JOIN budget_spend s"
        " ON s.scope = b.scope AND s.scope_id = b.scope_id AND s.month = $3"
        " AND s.tenant_id = b.tenant_id"
        " WHERE b.scope = $1 AND b.scope_id = $2 AND b.tenant_id = $4",
        scope[0],
        scope[1],
        month_of(now or datetime.now(UTC)),
        tenant_id,
    )
    if row is None:
        return None
    return BudgetRow(
        scope=scope,
        tenant_id=row["tenant_id"],
        monthly_limit_micro_usd=row["monthly_limit_micro_usd"],
        alert_thresholds=list(row["alert_thresholds"]),
        prepaid=row["prepaid"],
        blocked_reason=row["blocked_reason"],
        spent_micro_usd=row["spent"],
    )


async def month_spend(
    conn: asyncpg.Connection | asyncpg.Pool, scope: Scope, tenant_id: str, now: datetime
) -> int:
    """The scope's spend this month counted for ``tenant_id``."""
    value = await conn.fetchval(
        "SELECT spent_micro_usd FROM budget_spend WHERE scope = $1 AND scope_id = $2"
        " AND month = $3 AND tenant_id = $4",
        scope[0],
        scope[1],
        month_of(now),
        tenant_id,
    )
    return int(value or 0)
