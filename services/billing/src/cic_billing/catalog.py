"""The model catalog and the regions, in Postgres (schema ``billing``).

The catalog is ``model_prices``: every row but the ``*`` default price is a model tenants may
call, with its type, its context length and its prices (micro-dollars per million tokens). A
region carries the cost multiplier applied to the requests served there, in parts per million.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from cic_billing.pricing import DEFAULT_PRICE_MODEL

MODEL_TYPES = ("chat", "completion", "embedding")
MAX_CONTEXT_LENGTH = 10_000_000
# 1,000x: a multiplier beyond it is a typing mistake, not a price.
MAX_MULTIPLIER_PPM = 1_000_000_000


class AlreadyExists(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    type: str
    context_length: int
    prompt_micro_usd_per_mtok: int
    completion_micro_usd_per_mtok: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RegionRow:
    code: str
    name: str
    cost_multiplier_ppm: int
    created_at: datetime
    updated_at: datetime


def _model(record: asyncpg.Record) -> ModelRow:
    return ModelRow(
        name=record["model"],
        type=record["type"],
        context_length=record["context_length"],
        prompt_micro_usd_per_mtok=record["prompt_micro_usd_per_mtok"],
        completion_micro_usd_per_mtok=record["completion_micro_usd_per_mtok"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
    )


def _region(record: asyncpg.Record) -> RegionRow:
    return RegionRow(
        code=record["code"],
        name=record["name"],
        cost_multiplier_ppm=record["cost_multiplier_ppm"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
    )


async def list_models(pool: asyncpg.Pool) -> list[ModelRow]:
    rows = await pool.fetch(
        "SELECT model, type, context_length, prompt_micro_usd_per_mtok,"
        " completion_micro_usd_per_mtok, created_at, updated_at"
        " FROM model_prices WHERE model <> $1 ORDER BY model",
        DEFAULT_PRICE_MODEL,
    )
    return [_model(r) for r in rows]


@dataclass(frozen=True, slots=True)
class NewModel:
    name: str
    type: str
    context_length: int
    prompt_micro_usd_per_mtok: int
    completion_micro_usd_per_mtok: int


async def create_model(pool: asyncpg.Pool, model: NewModel) -> ModelRow:
    """Adds the model; :class:`AlreadyExists` when it is in the catalog."""
    row = await pool.fetchrow(
        "INSERT INTO model_prices (model, type, context_length, prompt_micro_usd_per_mtok,"
        " completion_micro_usd_per_mtok) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (model) DO NOTHING RETURNING model, type, context_length,"
        " prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, created_at, updated_at",
        model.name,
        model.type,
        model.context_length,
        model.prompt_micro_usd_per_mtok,
        model.completion_micro_usd_per_mtok,
    )
    if row is None:
        raise AlreadyExists(model.name)
    return _model(row)


async def update_model(
    pool: asyncpg.Pool, name: str, changes: Mapping[str, object]
) -> ModelRow | None:
    """Sets those of type, context_length and the two prices that ``changes`` holds; None when
    the model is not in the catalog."""
    row = await pool.fetchrow(
        "UPDATE model_prices SET"
        " type = coalesce($2, type),"
        " context_length = coalesce($3, context_length),"
        " prompt_micro_usd_per_mtok = coalesce($4, prompt_micro_usd_per_mtok),"
        " completion_micro_usd_per_mtok = coalesce($5, completion_micro_usd_per_mtok),"
        " updated_at = now()"
        " WHERE model = $1 AND model <> $6 RETURNING model, type, context_length,"
        " prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, created_at, updated_at",
        name,
        changes.get("type"),
        changes.get("context_length"),
        changes.get("prompt_micro_usd_per_mtok"),
        changes.get("completion_micro_usd_per_mtok"),
        DEFAULT_PRICE_MODEL,
    )
    return None if row is None else _model(row)


async def delete_model(pool: asyncpg.Pool, name: str) -> bool:
    deleted = await pool.fetchval(
        "DELETE FROM model_prices WHERE model = $1 AND model <> $2 RETURNING model",
        name,
        DEFAULT_PRICE_MODEL,
    )
    return deleted is not None


async def list_regions(pool: asyncpg.Pool) -> list[RegionRow]:
    rows = await pool.fetch(
        "SELECT code, name, cost_multiplier_ppm, created_at, updated_at FROM regions ORDER BY code"
    )
    return [_region(r) for r in rows]


async def create_region(pool: asyncpg.Pool, code: str, name: str, multiplier_ppm: int) -> RegionRow:
    """Adds the region; :class:`AlreadyExists` when its code is taken."""
    row = await pool.fetchrow(
        "INSERT INTO regions (code, name, cost_multiplier_ppm) VALUES ($1, $2, $3)"
        " ON CONFLICT (code) DO NOTHING"
        " RETURNING code, name, cost_multiplier_ppm, created_at, updated_at",
        code,
        name,
        multiplier_ppm,
    )
    if row is None:
        raise AlreadyExists(code)
    return _region(row)


async def update_region(
    pool: asyncpg.Pool, code: str, name: str | None, multiplier_ppm: int | None
) -> RegionRow | None:
    row = await pool.fetchrow(
        "UPDATE regions SET name = coalesce($2, name),"
        " cost_multiplier_ppm = coalesce($3, cost_multiplier_ppm), updated_at = now()"
        " WHERE code = $1 RETURNING code, name, cost_multiplier_ppm, created_at, updated_at",
        code,
        name,
        multiplier_ppm,
    )
    return None if row is None else _region(row)
