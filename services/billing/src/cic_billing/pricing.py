"""Model prices and the cost of a request, in integer micro-dollars (never floats).

The cost of one request is

    cost_micro_usd = round_half_up((prompt_tokens * prompt_price
                                    + completion_tokens * completion_price) / 1_000_000)

where both prices are micro-dollars per million tokens. It is computed with Python integers
(arbitrary precision, so nothing is lost however large the counts), rounding once on the sum:
``(numerator + 500_000) // 1_000_000`` for a non-negative numerator. A model without a row of its
own is priced by the ``*`` row.

A request served in a region pays the region's cost multiplier, held exactly as parts per million
(``ppm``; 1.5x = 1_500_000). It multiplies the unrounded sum, and the result is rounded once, half
up: ``(numerator * ppm + 500_000_000_000) // 1_000_000_000_000``. With the neutral multiplier
(1_000_000 ppm: an empty or unknown region) this is exactly the formula above.

Prices are cached in memory and reloaded from ``model_prices`` when older than the refresh
interval, so ingestion does not query prices per event. Operators change prices through the
admin API (billing's SetPrice and DeletePrice RPCs), which reload the cache of the replica that
made the change; other replicas pick the change up within ``PRICE_REFRESH_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

log = logging.getLogger(__name__)

MICRO_USD_PER_TOKEN_DIVISOR = 1_000_000
DEFAULT_PRICE_MODEL = "*"
PPM = 1_000_000  # a multiplier of 1.0, in parts per million
REGIONAL_DIVISOR = MICRO_USD_PER_TOKEN_DIVISOR * PPM


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


def cost_micro_usd(
    prompt_tokens: int, completion_tokens: int, price: Price, multiplier_ppm: int = PPM
) -> int:
    """The cost of one request, rounded half up to a whole micro-dollar (see the module doc)."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts must not be negative")
    numerator = (
        prompt_tokens * price.prompt_micro_usd_per_mtok
        + completion_tokens * price.completion_micro_usd_per_mtok
    )
    return (numerator * multiplier_ppm + REGIONAL_DIVISOR // 2) // REGIONAL_DIVISOR


class PriceTable:
    """A snapshot of ``model_prices`` and of the regions' cost multipliers."""

    def __init__(self, prices: dict[str, Price], multipliers: dict[str, int] | None = None) -> None:
        self._prices = prices
        self._multipliers = multipliers or {}

    def multiplier_ppm(self, region: str) -> int:
        """The region's cost multiplier in parts per million; 1.0x for an empty or unknown one."""
        return self._multipliers.get(region, PPM)

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
        regions = await self._pool.fetch("SELECT code, cost_multiplier_ppm FROM regions")
        table = PriceTable(
            {
                row["model"]: Price(
                    row["prompt_micro_usd_per_mtok"], row["completion_micro_usd_per_mtok"]
                )
                for row in rows
            },
            {row["code"]: row["cost_multiplier_ppm"] for row in regions},
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

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def _stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self._refresh_s


@dataclass(frozen=True, slots=True)
class PriceRow:
    model: str
    price: Price
    updated_at: datetime


def _price_row(record: asyncpg.Record) -> PriceRow:
    return PriceRow(
        record["model"],
        Price(record["prompt_micro_usd_per_mtok"], record["completion_micro_usd_per_mtok"]),
        record["updated_at"],
    )


async def list_prices(pool: asyncpg.Pool) -> list[PriceRow]:
    rows = await pool.fetch(
        "SELECT model, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, updated_at"
        " FROM model_prices ORDER BY model"
    )
    return [_price_row(r) for r in rows]


async def set_price(pool: asyncpg.Pool, model: str, price: Price) -> PriceRow:
    """Creates or replaces the model's price."""
    row = await pool.fetchrow(
        "INSERT INTO model_prices (model, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok)"
        " VALUES ($1, $2, $3) ON CONFLICT (model) DO UPDATE SET"
        " prompt_micro_usd_per_mtok = EXCLUDED.prompt_micro_usd_per_mtok,"
        " completion_micro_usd_per_mtok = EXCLUDED.completion_micro_usd_per_mtok,"
        " updated_at = now()"
        " RETURNING model, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, updated_at",
        model,
        price.prompt_micro_usd_per_mtok,
        price.completion_micro_usd_per_mtok,
    )
    assert row is not None
    return _price_row(row)


async def delete_price(pool: asyncpg.Pool, model: str) -> bool:
    """False when the model had no price row."""
    deleted = await pool.fetchval(
        "DELETE FROM model_prices WHERE model = $1 RETURNING model", model
    )
    return deleted is not None
