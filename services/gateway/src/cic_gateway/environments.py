"""Environments in Postgres (schema ``gateway``, table ``environments``, migration 0003).

Every tenant has environments (a ``production`` one is made with the tenant by a trigger), each
with a region preference, an optional list of allowed models, token quotas and a concurrency
limit; every API key belongs to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from cic_gateway.store import new_id

_COLUMNS = (
    "id, tenant_id, name, status, region, models, tpm_limit, tokens_per_day,"
    " concurrency_limit, created_at"
)
# What a caller may set; the SQL below names only these.
FIELDS = ("name", "status", "region", "models", "tpm_limit", "tokens_per_day", "concurrency_limit")


class DuplicateName(Exception):
    pass


def _row(row: asyncpg.Record) -> dict[str, Any]:
    found = dict(row)
    if found["models"] is not None:
        found["models"] = list(found["models"])
    return found


async def create_environment(
    pool: asyncpg.Pool, tenant_id: str, values: Mapping[str, Any]
) -> dict[str, Any]:
    names = [f for f in FIELDS if f in values]
    placeholders = ", ".join(f"${i + 3}" for i in range(len(names)))
    columns = ", ".join(["id", "tenant_id", *names])
    try:
        row = await pool.fetchrow(
            f"INSERT INTO environments ({columns}) VALUES ($1, $2"  # noqa: S608 (constant column names)
            f"{', ' if names else ''}{placeholders}) RETURNING {_COLUMNS}",
            new_id("env"),
            tenant_id,
            *(values[f] for f in names),
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateName(values.get("name")) from None
    assert row is not None
    return _row(row)


async def list_environments(pool: asyncpg.Pool, tenant_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM environments WHERE tenant_id = $1 ORDER BY created_at, id",  # noqa: S608 (constant column names)
        tenant_id,
    )
    return [_row(r) for r in rows]


async def get_environment(
    pool: asyncpg.Pool, environment_id: str, tenant_id: str | None = None
) -> dict[str, Any] | None:
    """The environment, or None when unknown (or, with ``tenant_id``, another tenant's)."""
    if "\x00" in environment_id:  # no such id can exist: Postgres text holds no NUL character
        return None
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM environments"  # noqa: S608 (constant column names)
        " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        environment_id,
        tenant_id,
    )
    return None if row is None else _row(row)


async def update_environment(
    pool: asyncpg.Pool, environment_id: str, changes: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Sets the ``FIELDS`` that ``changes`` holds; None when the id is unknown."""
    if "\x00" in environment_id:  # no such id can exist: Postgres text holds no NUL character
        return None
    names = [f for f in FIELDS if f in changes]
    sets = "".join(f"{name} = ${i + 2}, " for i, name in enumerate(names))
    try:
        row = await pool.fetchrow(
            f"UPDATE environments SET {sets}updated_at = now() WHERE id = $1"  # noqa: S608 (constant column names)
            f" RETURNING {_COLUMNS}",
            environment_id,
            *(changes[f] for f in names),
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateName(changes.get("name")) from None
    return None if row is None else _row(row)
