"""The usage ledger in Postgres (schema ``billing``): every SQL statement billing runs on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from cic_billing.events import LedgerRow

# Errors after which the same call may well succeed later: the client should retry.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)

# Times arrive as microseconds since the epoch, made timestamps here exactly (whole seconds and
# the microseconds apart: a float holds either exactly, not always their product).
_INSERT_EVENTS = """
INSERT INTO usage_events (
    request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
    cost_micro_usd, started_at, finished_at, streamed, status_code)
SELECT request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
       cost_micro_usd,
       'epoch'::timestamptz + (started / 1000000) * interval '1 second'
                            + (started % 1000000) * interval '1 microsecond',
       'epoch'::timestamptz + (finished / 1000000) * interval '1 second'
                            + (finished % 1000000) * interval '1 microsecond',
       streamed, status_code
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::boolean[], $12::integer[])
    AS e (request_id, tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens,
          cost_micro_usd, started, finished, streamed, status_code)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""

# One pass: a row per model, plus the grand total (the empty grouping set, present even when
# the tenant has no usage in the range).
_TENANT_USAGE = """
SELECT grouping(model) = 1 AS is_total,
       model,
       count(*) AS requests,
       coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM usage_events
WHERE tenant_id = $1
  AND finished_at >= coalesce($2::timestamptz, '-infinity'::timestamptz)
  AND finished_at < $3::timestamptz
  AND ($4::text IS NULL OR model = $4::text)
GROUP BY GROUPING SETS ((model), ())
ORDER BY is_total DESC, model
"""


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

    async def tenant_usage(
        self, tenant_id: str, start: datetime | None, end: datetime, model: str | None = None
    ) -> TenantUsage:
        """Sums of the tenant's events with ``finished_at`` in ``[start, end)`` (no start: from
        the beginning), of one model or all, in total and per model."""
        total = UsageSums()
        by_model: dict[str, UsageSums] = {}
        for record in await self._pool.fetch(_TENANT_USAGE, tenant_id, start, end, model):
            sums = UsageSums(
                requests=record["requests"],
                prompt_tokens=record["prompt_tokens"],
                completion_tokens=record["completion_tokens"],
                cost_micro_usd=record["cost_micro_usd"],
            )
            if record["is_total"]:
                total = sums
            else:
                by_model[record["model"]] = sums
        return TenantUsage(total=total, by_model=by_model)
