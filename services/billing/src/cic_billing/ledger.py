"""The usage ledger in Postgres (schema ``billing``): every SQL statement billing runs on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import grpc

from cic_billing.events import LedgerRow
from cic_common.grpc_replies import abort

# Errors after which the same call may well succeed later: the client should retry.
DATABASE_UNAVAILABLE = "billing's database is unavailable"  # what an RPC answers then
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)


@contextlib.asynccontextmanager
async def db_or_unavailable(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Runs an RPC's database work; a transient database error ends the call UNAVAILABLE
    (:data:`DATABASE_UNAVAILABLE`), which tells the client to retry."""
    try:
        yield
    except TRANSIENT_DB_ERRORS:
        await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)


# Times arrive as microseconds since the epoch, made timestamps here exactly (whole seconds and
# the microseconds apart: a float holds either exactly, not always their product).
_INSERT_EVENTS = """
INSERT INTO usage_events (
    request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
    cost_micro_usd, started_at, finished_at, streamed, status_code, environment_id, region)
SELECT request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
       cost_micro_usd,
       'epoch'::timestamptz + (started / 1000000) * interval '1 second'
                            + (started % 1000000) * interval '1 microsecond',
       'epoch'::timestamptz + (finished / 1000000) * interval '1 second'
                            + (finished % 1000000) * interval '1 microsecond',
       streamed, status_code, environment_id, region
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::boolean[], $12::integer[], $13::text[],
    $14::text[])
    AS e (request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
          cost_micro_usd, started, finished, streamed, status_code, environment_id, region)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id, tenant_id, environment_id, cost_micro_usd,
          (date_trunc('month', finished_at AT TIME ZONE 'UTC'))::date AS month
"""

# One pass: a row per model, a row per bucket of the breakdown asked for, and the grand total
# (the empty grouping set, present even when the tenant has no usage in the range). The bucket is
# one of the fixed expressions of _BUCKETS, never text from a caller. Time buckets are UTC.
_TENANT_USAGE = """
SELECT grouping(model) = 1 AND grouping(bucket) = 1 AS is_total,
       grouping(model) = 0 AS is_model,
       model,
       bucket,
       count(*) AS requests,
       coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM (SELECT *, {bucket} AS bucket FROM usage_events
      WHERE tenant_id = $1
        AND finished_at >= coalesce($2::timestamptz, '-infinity'::timestamptz)
        AND finished_at < $3::timestamptz
        AND ($4::text IS NULL OR model = $4::text)) e
GROUP BY GROUPING SETS ((model), (bucket), ())
ORDER BY is_total DESC, is_model DESC, model, bucket
"""


def _utc_bucket(unit: str) -> str:
    return f"date_trunc('{unit}', finished_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


# group_by -> the bucket's SQL expression (text for keys, timestamptz for time buckets).
_BUCKETS: dict[str, str] = {
    "model": "model",
    "key": "coalesce(api_key_id, '')",
    "environment": "coalesce(environment_id, '')",
    "hour": _utc_bucket("hour"),
    "day": _utc_bucket("day"),
    "month": _utc_bucket("month"),
}
GROUP_BY_CHOICES = tuple(_BUCKETS)
# Without a breakdown the bucket is a constant: its grouping set adds one row, which is dropped.
_NO_BREAKDOWN = _TENANT_USAGE.format(bucket="NULL::text")
_WITH_BREAKDOWN = {
    name: _TENANT_USAGE.format(bucket=expression) for name, expression in _BUCKETS.items()
}


@dataclass(frozen=True, slots=True)
class UsageSums:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class TenantUsage:
    total: UsageSums
    by_model: dict[str, UsageSums] = field(default_factory=dict)
    # The group_by rows in order: (model, key or environment id, or a time bucket's start).
    breakdown: list[tuple[str | datetime, UsageSums]] = field(default_factory=list)


def _unique_in_lock_order(rows: Sequence[LedgerRow]) -> list[LedgerRow]:
    """The first row of each request id, sorted by id: concurrent batches that share ids then
    take their row locks in the same order and cannot deadlock."""
    first: dict[str, LedgerRow] = {}
    for row in rows:
        first.setdefault(row[0], row)
    return [first[request_id] for request_id in sorted(first)]


class Ledger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, rows: Sequence[LedgerRow]) -> list[str]:
        """Inserts, in one statement, the rows whose request id the ledger does not hold yet
        (the first of several rows sharing an id); returns the request ids inserted."""
        unique = _unique_in_lock_order(rows)
        if not unique:
            return []
        records = await self._pool.fetch(_INSERT_EVENTS, *zip(*unique, strict=True))
        return [record["request_id"] for record in records]

    @staticmethod
    async def insert_on(
        conn: asyncpg.Connection, rows: Sequence[LedgerRow]
    ) -> list[asyncpg.Record]:
        """As :meth:`insert`, on ``conn`` (inside the caller's transaction); answers each
        inserted row's request_id, tenant_id, environment_id, cost_micro_usd and month (the
        first day of its UTC calendar month), in request id order."""
        unique = _unique_in_lock_order(rows)
        if not unique:
            return []
        return list(await conn.fetch(_INSERT_EVENTS, *zip(*unique, strict=True)))

    async def tenant_usage(
        self,
        tenant_id: str,
        start: datetime | None,
        end: datetime,
        model: str | None = None,
        group_by: str | None = None,
    ) -> TenantUsage:
        """Sums of the tenant's events with ``finished_at`` in ``[start, end)`` (no start: from
        the beginning), of one model or all: in total, per model, and per bucket of ``group_by``
        (one of :data:`GROUP_BY_CHOICES`; None: no breakdown)."""
        query = _NO_BREAKDOWN if group_by is None else _WITH_BREAKDOWN[group_by]
        total = UsageSums()
        by_model: dict[str, UsageSums] = {}
        breakdown: list[tuple[str | datetime, UsageSums]] = []
        for record in await self._pool.fetch(query, tenant_id, start, end, model):
            sums = UsageSums(
                requests=record["requests"],
                prompt_tokens=record["prompt_tokens"],
                completion_tokens=record["completion_tokens"],
                cost_micro_usd=record["cost_micro_usd"],
            )
            if record["is_total"]:
                total = sums
            elif record["is_model"]:
                by_model[record["model"]] = sums
            elif group_by is not None:
                breakdown.append((record["bucket"], sums))
        return TenantUsage(total=total, by_model=by_model, breakdown=breakdown)
