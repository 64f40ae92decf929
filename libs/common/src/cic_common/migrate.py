"""``cic-migrate SCHEMA=PACKAGE ...``: applies migrations and exits, nothing else.

Services migrate their own schema when they start (:func:`cic_common.db.open_pool`); this entry
point lets a deployment migrate first, on its own, e.g. from a Kubernetes Job run before a
rollout. ``DATABASE_URL`` comes from the environment; each argument names a schema and the
package that holds its ``NNNN_name.sql`` files, e.g. ``gateway=cic_gateway.migrations``.
Exit codes: 0 done, 1 the database failed, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from cic_common.db import migrate
from cic_common.logging import configure_logging
from cic_common.settings import PostgresUrl, load_settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


class MigrateSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    database_url: PostgresUrl
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"


def _target(value: str) -> tuple[str, str]:
    schema, sep, package = value.partition("=")
    if not sep or not schema or not package:
        raise argparse.ArgumentTypeError(f"{value!r} is not SCHEMA=PACKAGE")
    return schema, package


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cic-migrate",
        description="Applies the migrations not yet applied to each schema, then exits. "
        "DATABASE_URL comes from the environment.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        type=_target,
        metavar="SCHEMA=PACKAGE",
        help="a schema and the package holding its migrations, e.g. gateway=cic_gateway.migrations",
    )
    return parser


async def run(database_url: str, targets: Sequence[tuple[str, str]]) -> list[str]:
    """Migrates every target in order on one connection; returns the migrations applied."""
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    applied: list[str] = []
    try:
        for schema, package in targets:
            done = await migrate(conn, schema, package)
            log.info("schema %s is up to date (%d migrations applied now)", schema, len(done))
            applied.extend(f"{schema}/{name}" for name in done)
    finally:
        await conn.close()
    return applied


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(MigrateSettings, os.environ)
    configure_logging(settings.log_level, settings.log_format, "migrate")
    try:
        asyncio.run(run(settings.database_url, args.targets))
    except (ModuleNotFoundError, ValueError) as err:
        print(f"cic-migrate: {err}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        log.error("migration failed: %s: %s", type(err).__name__, err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
