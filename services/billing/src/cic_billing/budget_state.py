"""Blocked budget scopes, mirrored to Redis for the gateway, and the budget events on the bus.

The hash ``{prefix}budget:blocked`` holds one field per blocked scope (``tenant:<id>`` or
``environment:<id>``) whose value is the reason (``monthly_limit``, ``credit_exhausted``). Every
gateway replica re-reads it every second or so and refuses the scopes' new requests; it never
asks billing. Postgres (``budgets.blocked_reason``) is the truth: every transaction that changes a
scope's state writes the change to Redis before it commits, holding a transaction-level advisory
lock, and the keeper (every ``BUDGET_SYNC_INTERVAL_S``) recomputes every budget (a new month
unblocks; an expired grant may block a prepaid tenant) and rewrites the whole hash under the same
lock, so Redis follows Postgres in commit order and a lost write heals within one period.

Alerts and exhaustions are published after the commit as ``budget.threshold`` and
``budget.exhausted`` (:mod:`cic_common.events_bus`); publishing never fails a call. A threshold
alert the bus did not take (Redis slow or away) is unmarked, and is due again with the scope's
next spend.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cic_billing import budgets
from cic_billing.budgets import ENVIRONMENT, Alert, Transition, scope_key
from cic_billing.metrics import BillingMetrics
from cic_common.events_bus import EventBus, EventKind
from cic_common.periodic import cancel_and_wait, every

log = logging.getLogger(__name__)

BLOCKED_HASH = "budget:blocked"
REDIS_TIMEOUT_S = 1.0
_MIRROR_LOCK = int.from_bytes(
    hashlib.sha256(b"cic-billing:budget-mirror").digest()[:8], "big", signed=True
)


def _period(alert_or_change: Alert | Transition) -> str:
    return alert_or_change.month.strftime("%Y-%m")


def _scope_fields(scope: budgets.Scope) -> dict[str, str]:
    fields = {"budget_id": scope_key(scope), "scope": scope[0]}
    if scope[0] == ENVIRONMENT:
        fields["environment_id"] = scope[1]
    return fields


class BudgetState:
    """Writes blocked scopes to Redis (``redis`` None: no REDIS_URL, nothing is mirrored) and
    publishes budget events (``bus`` None: none)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis | None,
        prefix: str,
        bus: EventBus | None,
        metrics: BillingMetrics,
        sync_interval_s: float,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self.hash = f"{prefix}{BLOCKED_HASH}"
        self._bus = bus
        self._metrics = metrics
        self._interval_s = sync_interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._redis is None:
            log.warning("no REDIS_URL: the gateways cannot learn of spent budgets")
        await self._sync_logged()
        self._task = asyncio.create_task(
            every(self._interval_s, self._sync_logged, log, "budget keeper round"),
            name="budget-keeper",
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def mirror(self, conn: asyncpg.Connection, changes: Sequence[Transition]) -> None:
        """Writes ``changes`` to Redis; call inside the transaction that made them, before it
        commits (after every row lock it takes)."""
        if not changes or self._redis is None:
            return
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIRROR_LOCK)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                pipe = self._redis.pipeline(transaction=True)
                for change in changes:
                    if change.reason is None:
                        pipe.hdel(self.hash, scope_key(change.scope))
                    else:
                        pipe.hset(self.hash, scope_key(change.scope), change.reason)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as err:
            self._metrics.budget_mirror_failures.inc()
            log.warning(
                "blocked budgets not written to Redis (%s); the keeper writes them within %ss",
                type(err).__name__,
                self._interval_s,
            )

    async def sync(self) -> list[Transition]:
        """Recomputes every budget and rewrites the Redis hash from Postgres; answers what
        changed (and publishes it)."""
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            changes = await budgets.recompute(conn, await budgets.all_scopes(conn), now)
            if self._redis is not None:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIRROR_LOCK)
                await self._rewrite(self._redis, await budgets.blocked_scopes(conn))
        await self.announce([], changes)
        return changes

    async def _rewrite(self, redis: Redis, blocked: Mapping[str, str]) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                pipe = redis.pipeline(transaction=True)
                pipe.delete(self.hash)
                for field, reason in blocked.items():
                    pipe.hset(self.hash, field, reason)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as err:
            self._metrics.budget_mirror_failures.inc()
            log.warning("blocked budgets not written to Redis: %s", type(err).__name__)

    async def _sync_logged(self) -> None:
        try:
            await self.sync()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("budgets not synchronised: %s: %s", type(err).__name__, err)

    async def _unmark(self, alerts: Sequence[Alert]) -> None:
        """Alerts the bus did not take are due again with the scope's next spend."""
        try:
            await budgets.unmark_alerts(self._pool, alerts)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("%d budget alerts lost: %s", len(alerts), type(err).__name__)

    async def announce(self, alerts: Sequence[Alert], changes: Sequence[Transition]) -> None:
        """Publishes ``budget.threshold`` for each alert and ``budget.exhausted`` for each scope
        blocked; logs unblocked scopes. Call after the commit."""
        for change in changes:
            what = f"blocked ({change.reason})" if change.reason else "unblocked"
            log.info("budget %s %s", scope_key(change.scope), what)
            self._metrics.budget_transitions.labels(change.reason or "unblocked").inc()
        if self._bus is None:
            return
        unsent: list[Alert] = []
        for alert in alerts:
            published = await self._bus.publish(
                EventKind.BUDGET_THRESHOLD,
                alert.tenant_id,
                {
                    **_scope_fields(alert.scope),
                    "threshold_pct": alert.threshold_pct,
                    "spent_micro_usd": alert.spent_micro_usd,
                    "limit_micro_usd": alert.limit_micro_usd,
                    "period": _period(alert),
                },
            )
            if published is None:
                unsent.append(alert)
        if unsent:
            await self._unmark(unsent)
        for change in changes:
            if change.reason is None:
                continue
            await self._bus.publish(
                EventKind.BUDGET_EXHAUSTED,
                change.tenant_id,
                {
                    **_scope_fields(change.scope),
                    "reason": change.reason,
                    "spent_micro_usd": change.spent_micro_usd,
                    "limit_micro_usd": change.limit_micro_usd,
                    "balance_micro_usd": change.balance_micro_usd,
                    "period": _period(change),
                },
            )
