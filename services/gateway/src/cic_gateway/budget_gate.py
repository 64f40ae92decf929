"""Budget enforcement: tenants and environments whose monthly limit or prepaid credit is spent.

Billing keeps the blocked scopes in the Redis hash ``{prefix}budget:blocked`` (fields
``tenant:<id>`` and ``environment:<id>``, values the reason; see ``cic_billing.budget_state``).
Each replica reads the whole hash when it starts and again every ``BUDGET_REFRESH_S`` (1 s by
default) into an in-process set, so every replica refuses a scope within about a second of
billing recording the spend that blocked it. The request path reads only that set: never Redis,
never billing. While Redis cannot be read the last set read stays in force (logged once).

A blocked request gets OpenAI's answer to an exhausted quota: 429 with
``{"error": {"type": "insufficient_quota", "code": "insufficient_quota", ...}}``. Requests
already in flight finish.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cic_common.periodic import cancel_and_wait, every
from cic_gateway.errors import ApiError
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.store import KeyAuth

log = logging.getLogger(__name__)

BLOCKED_HASH = "budget:blocked"
INSUFFICIENT_QUOTA = "insufficient_quota"
READ_TIMEOUT_S = 2.0

_MESSAGES = {
    "monthly_limit": "the monthly budget of {what} is spent",
    "credit_exhausted": "the prepaid credit of {what} is spent",
}


def _refusal(reason: str, what: str) -> ApiError:
    because = _MESSAGES.get(reason, "the budget of {what} is spent").format(what=what)
    return ApiError(
        429,
        f"You exceeded your current quota: {because}. Add credit or raise the budget to"
        " continue; see your billing details.",
        type=INSUFFICIENT_QUOTA,
        code=INSUFFICIENT_QUOTA,
    )


class BudgetGate:
    """The blocked scopes as last read from Redis; :meth:`check` refuses their requests."""

    def __init__(
        self, redis: Redis, prefix: str, refresh_s: float, metrics: GatewayMetrics
    ) -> None:
        self._redis = redis
        self.hash = f"{prefix}{BLOCKED_HASH}"
        self._refresh_s = refresh_s
        self._metrics = metrics
        self._blocked: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def blocked(self) -> dict[str, str]:
        return dict(self._blocked)

    def check(self, auth: KeyAuth) -> None:
        """Raises the 429 when the key's tenant or environment is blocked."""
        if not self._blocked:
            return
        reason = self._blocked.get(f"tenant:{auth.tenant_id}")
        if reason is not None:
            self._metrics.budget_refusals.labels("tenant").inc()
            raise _refusal(reason, "this account")
        reason = self._blocked.get(f"environment:{auth.environment.id}")
        if reason is not None:
            self._metrics.budget_refusals.labels("environment").inc()
            raise _refusal(reason, f"the environment '{auth.environment.name}'")

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(
            every(self._refresh_s, self.refresh, log, "reading the blocked budgets"),
            name="budget-gate",
        )

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def refresh(self) -> bool:
        """Reads the whole hash; False (and the last set kept) when Redis cannot be read."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                raw = await self._redis.hgetall(self.hash)
        except (RedisError, OSError, TimeoutError) as err:
            if not self._failing:
                log.warning(
                    "blocked budgets not read from Redis (%s); the last ones read stay in force",
                    type(err).__name__,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("blocked budgets read from Redis again")
        self._failing = False
        self._blocked = {_text(k): _text(v) for k, v in raw.items()}
        self._metrics.budget_blocked_scopes.set(len(self._blocked))
        return True


def _text(value: bytes | str) -> str:
    """A field or value of the hash as text; bytes that are not UTF-8 never fail a refresh."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
