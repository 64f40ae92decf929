"""Model prices and the cost of a request, in integer micro-dollars (never floats).

The cost of one request is

    cost_micro_usd = round_half_up((prompt_tokens * prompt_price
                                    + completion_tokens * completion_price) / 1_000_000)

where both prices are micro-dollars per million tokens. It is computed with Python integers
(arbitrary precision, so nothing is lost however large the counts), rounding once on the sum:
``(numerator + 500_000) // 1_000_000`` for a non-negative numerator. A model without a row of its
own is priced by the ``*`` row.

Prices are cached in memory and reloaded from ``model_prices`` when older than the refresh
interval, so ingestion does not query prices per event. ``reload()`` is the seam for whatever
changes prices (the price admin of a later issue calls it after a change).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

MICRO_USD_PER_TOKEN_DIVISOR = 1_000_000
DEFAULT_PRICE_MODEL = "*"


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million tokens."""

    prompt_micro_usd_per_mtok: int
    completion_micro_usd_per_mtok: int


class NoPriceError(LookupError):
    """Neither the model nor the ``*`` default has a price."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"no price for model {model!r} and no {DEFAULT_PRICE_MODEL!r} default price"
        )
        self.model = model


def cost_micro_usd(prompt_tokens: int, completion_tokens: int, price: Price) -> int:
    """The cost of one request, rounded half up to a whole micro-dollar (see the module doc)."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts must not be negative")
    numerator = (
        prompt_tokens * price.prompt_micro_usd_per_mtok
        + completion_tokens * price.completion_micro_usd_per_mtok
    )
    return (numerator + MICRO_USD_PER_TOKEN_DIVISOR // 2) // MICRO_USD_PER_TOKEN_DIVISOR


class PriceTable:
    """A snapshot of ``model_prices``."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    def price_for(self, model: str) -> Price:
        """The model's own price, else the ``*`` default; :class:`NoPriceError` if neither."""
        if model in self._prices:
            return self._prices[model]
        if DEFAULT_PRICE_MODEL in self._prices:
            return self._prices[DEFAULT_PRICE_MODEL]
        raise NoPriceError(model)


class PriceBook:
    """``model_prices`` cached in memory, reloaded when older than ``refresh_s``."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._table: PriceTable | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def reload(self) -> PriceTable:
        """Reads every price now and makes it the current table."""
        rows = await self._pool.fetch(
            "SELECT model, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok"
            " FROM model_prices"
        )
        table = PriceTable(
            {
                row["model"]: Price(
                    row["prompt_micro_usd_per_mtok"], row["completion_micro_usd_per_mtok"]
                )
                for row in rows
            }
        )
        self._table, self._loaded_at = table, time.monotonic()
        return table

    async def current(self) -> PriceTable:
        """The cached table, reloaded first when stale. A failed reload keeps the stale table
        (and is retried on the next call); with no table at all it raises."""
        if self._table is not None and not self._stale():
            return self._table
        async with self._lock:
            if self._table is not None and not self._stale():
                return self._table
            try:
                return await self.reload()
            except Exception:
                if self._table is None:
                    raise
                log.warning("could not reload prices; using prices cached earlier", exc_info=True)
                return self._table

    def _stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self._refresh_s
