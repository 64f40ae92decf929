"""Meter reports in Postgres: every SQL statement the Stripe reporter runs.

A report sums, for one tenant and one aggregation window, the costs of the ledger events it
claimed, less what prepaid credits covered of them (``credit_micro_usd``, see
:mod:`cic_billing.credits`); each event is claimed by exactly one report
(``usage_events.meter_report_id``), in the
same statement that creates the report, so no event is counted twice or left out whatever runs
concurrently. A report's identifier, ``cic-<tenant id>-<window start in Unix seconds>`` (the
tenant id replaced by its SHA-256 when it is long or holds other characters than letters, digits,
``_`` and ``-``: Stripe takes 100 characters at most), is fixed when the report is made: every
retry of it sends the same identifier, and Stripe refuses a repeat.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_CLAIM = """
WITH pending AS (
    SELECT request_id, tenant_id, cost_micro_usd - credit_micro_usd AS due FROM usage_events
    WHERE meter_report_id IS NULL
    ORDER BY request_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), sums AS (
    SELECT tenant_id, sum(due)::bigint AS value, count(*)::int AS events
    FROM pending GROUP BY tenant_id
), reports AS (
    INSERT INTO meter_reports (tenant_id, window_start, identifier, value_micro_usd, events, state)
    SELECT tenant_id, $1,
           'cic-' || CASE WHEN tenant_id ~ '^[A-Za-z0-9_-]{1,64}$' THEN tenant_id
                          ELSE left(encode(sha256(convert_to(tenant_id, 'UTF8')), 'hex'), 40)
                     END || '-' || $3::text,
           value, events, CASE WHEN value = 0 THEN 'empty' ELSE 'pending' END
    FROM sums
    ON CONFLICT (tenant_id, window_start) DO NOTHING
    RETURNING id, tenant_id
), claimed AS (
    UPDATE usage_events e SET meter_report_id = r.id
    FROM pending p JOIN reports r USING (tenant_id)
    WHERE e.request_id = p.request_id
    RETURNING e.request_id
)
SELECT count(*) FROM claimed
"""

_DUE = """
SELECT r.id, r.tenant_id, r.identifier, r.value_micro_usd, r.window_start, r.attempts,
       c.customer_id
FROM meter_reports r LEFT JOIN stripe_customers c USING (tenant_id)
WHERE r.state = 'pending' AND r.next_attempt_at <= now()
ORDER BY r.id
LIMIT $1
"""

_TENANT_FIGURES = """
SELECT r.tenant_id,
       c.customer_id,
       coalesce(sum(r.value_micro_usd), 0)::bigint AS reports_total,
       coalesce(sum(r.value_micro_usd) FILTER (WHERE r.state = 'sent'), 0)::bigint AS reported,
       (SELECT coalesce(sum(e.cost_micro_usd - e.credit_micro_usd), 0)::bigint FROM usage_events e
        JOIN meter_reports r2 ON r2.id = e.meter_report_id
        WHERE r2.tenant_id = r.tenant_id AND r2.window_start >= $1) AS ledger
FROM meter_reports r LEFT JOIN stripe_customers c USING (tenant_id)
WHERE r.window_start >= $1
GROUP BY r.tenant_id, c.customer_id
ORDER BY r.tenant_id
"""

_ADVISORY_KEY = int.from_bytes(
    hashlib.sha256(b"cic-billing:stripe-reporter").digest()[:8], "big", signed=True
)


@dataclass(frozen=True, slots=True)
class DueReport:
    id: int
    tenant_id: str
    identifier: str
    value_micro_usd: int
    window_start: datetime
    attempts: int
    customer_id: str | None


@dataclass(frozen=True, slots=True)
class TenantFigures:
    tenant_id: str
    customer_id: str | None
    ledger_micro_usd: int
    reports_micro_usd: int
    reported_micro_usd: int


class MeterStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def try_lead(self, conn: asyncpg.Connection) -> bool:
        """Takes the reporter's advisory lock on ``conn`` if no other replica holds it."""
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ADVISORY_KEY))

    async def step_down(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_KEY)

    async def claim(self, window_start: datetime, limit: int) -> int:
        """Makes this window's report for each tenant with unreported events (at most ``limit``
        events); returns how many events were claimed. A tenant that already has a report for
        the window keeps its events for the next one."""
        epoch = str(int(window_start.timestamp()))
        return int(await self._pool.fetchval(_CLAIM, window_start, limit, epoch))

    async def due(self, limit: int) -> list[DueReport]:
        return [DueReport(**dict(r)) for r in await self._pool.fetch(_DUE, limit)]

    async def customer(self, tenant_id: str) -> str | None:
        value = await self._pool.fetchval(
            "SELECT customer_id FROM stripe_customers WHERE tenant_id = $1", tenant_id
        )
        return None if value is None else str(value)

    async def save_customer(self, tenant_id: str, customer_id: str) -> str:
        """Stores the tenant's customer unless it has one already; returns the one stored."""
        await self._pool.execute(
            "INSERT INTO stripe_customers (tenant_id, customer_id) VALUES ($1, $2)"
            " ON CONFLICT (tenant_id) DO NOTHING",
            tenant_id,
            customer_id,
        )
        stored = await self.customer(tenant_id)
        assert stored is not None
        return stored

    async def delivered(self, report_id: int) -> None:
        await self._pool.execute(
            "UPDATE meter_reports SET state = 'sent', sent_at = now(), attempts = attempts + 1,"
            " last_error = NULL WHERE id = $1",
            report_id,
        )

    async def retry_later(self, report_id: int, delay_s: float, error: str) -> None:
        await self._pool.execute(
            "UPDATE meter_reports SET attempts = attempts + 1, last_error = $3,"
            " next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1",
            report_id,
            delay_s,
            error,
        )

    async def refused(self, report_id: int, error: str) -> None:
        await self._pool.execute(
            "UPDATE meter_reports SET state = 'failed', attempts = attempts + 1, last_error = $2"
            " WHERE id = $1",
            report_id,
            error,
        )

    async def retry_failed(self, since: datetime) -> int:
        """Puts reports Stripe refused back in line (an operator may have fixed the cause)."""
        result = await self._pool.execute(
            "UPDATE meter_reports SET state = 'pending', next_attempt_at = now()"
            " WHERE state = 'failed' AND window_start >= $1",
            since,
        )
        return int(result.split()[-1])

    async def resend(self, tenant_id: str, since: datetime, sent_after: datetime) -> int:
        """Puts the tenant's sent reports back in line: those made since ``since`` and sent
        after ``sent_after`` (while Stripe still refuses a repeated identifier)."""
        result = await self._pool.execute(
            "UPDATE meter_reports SET state = 'pending', next_attempt_at = now()"
            " WHERE tenant_id = $1 AND state = 'sent' AND window_start >= $2 AND sent_at > $3",
            tenant_id,
            since,
            sent_after,
        )
        return int(result.split()[-1])

    async def figures(self, since: datetime) -> list[TenantFigures]:
        """Per tenant with reports since ``since``: the ledger cost of the events they claimed,
        their total, and the total of those sent."""
        return [
            TenantFigures(
                tenant_id=r["tenant_id"],
                customer_id=r["customer_id"],
                ledger_micro_usd=r["ledger"],
                reports_micro_usd=r["reports_total"],
                reported_micro_usd=r["reported"],
            )
            for r in await self._pool.fetch(_TENANT_FIGURES, since)
        ]
