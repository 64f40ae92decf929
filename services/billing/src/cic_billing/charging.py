"""One usage batch recorded in one transaction: the ledger rows, their draws from prepaid credit,
the month's spend counters and the budgets they block; then the budget events.

Every step is one statement for the whole batch (set-based), so ingestion stays fast; the extra
statements cost only the tenants with grants or budgets. Locks are always taken in the same order
(ledger rows by request id, grants, spend counters, budget rows, the Redis mirror's advisory
lock), so concurrent batches on several replicas cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from cic_billing import budgets, credits
from cic_billing.budget_state import BudgetState
from cic_billing.events import LedgerRow
from cic_billing.ledger import Ledger
from cic_billing.metrics import BillingMetrics


class Charger:
    def __init__(self, pool: asyncpg.Pool, state: BudgetState, metrics: BillingMetrics) -> None:
        self._pool = pool
        self.state = state
        self._metrics = metrics

    async def record(self, rows: Sequence[LedgerRow]) -> list[str]:
        """Records the rows the ledger does not hold yet; answers their request ids."""
        if not rows:
            return []
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await Ledger.insert_on(conn, rows)
            if not inserted:
                return []
            inserted.sort(key=lambda r: r["request_id"])
            drawn = await credits.draw(
                conn,
                [
                    credits.Charge(r["request_id"], r["tenant_id"], r["cost_micro_usd"])
                    for r in inserted
                ],
            )
            spend = await budgets.add_spend(
                conn, budgets.spend_deltas(inserted), now, drawn.balances
            )
            changes = await budgets.recompute(conn, spend.candidates, now)
            await self.state.mirror(conn, changes)
        self._metrics.credit_draws.inc(drawn.draws)
        await self.state.announce(spend.alerts, changes)
        return [r["request_id"] for r in inserted]
