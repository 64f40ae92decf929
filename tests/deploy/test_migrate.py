"""`cic-migrate`, the migrations Job's command, against a real Postgres: every service's schema
migrated in one run, nothing applied twice, one clear line for bad arguments."""

from __future__ import annotations

import asyncpg
import pytest

from cic_common import migrate
from cic_common.db import migration_files
from tests.deploy.manifests import ROOT
from tests.deploy.test_workloads import migrations_packages


def test_services_migrate_the_schemas_the_job_migrates() -> None:
    """The Job names each schema after its service: the services open the same ones."""
    for service, package in migrations_packages().items():
        source = "".join(p.read_text() for p in (ROOT / "services" / service / "src").rglob("*.py"))
        assert f'"{service}"' in source and f'"{package}"' in source, service


async def test_cic_migrate_applies_every_schema_once(database_url: str) -> None:
    targets = sorted(migrations_packages().items())
    applied = await migrate.run(database_url, targets)
    expected = [
        f"{schema}/{name}" for schema, pkg in targets for _, name, _ in migration_files(pkg)
    ]
    assert applied == expected
    assert await migrate.run(database_url, targets) == []
    conn = await asyncpg.connect(database_url)
    try:
        for schema, package in targets:
            rows = await conn.fetch(
                f'SELECT name FROM "{schema}".schema_migrations ORDER BY version'  # noqa: S608
            )
            assert [r["name"] for r in rows] == [n for _, n, _ in migration_files(package)]
    finally:
        await conn.close()


def test_cic_migrate_refuses_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        migrate.main(["gateway"])
    assert exit_info.value.code == 2
    assert "SCHEMA=PACKAGE" in capsys.readouterr().err


def test_cic_migrate_names_a_missing_database_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        migrate.main(["gateway=cic_gateway.migrations"])
    assert exit_info.value.code == 2
    assert "DATABASE_URL is required" in capsys.readouterr().err


def test_cic_migrate_exits_1_when_the_database_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    # The root logger stays as the test session set it.
    monkeypatch.setattr(migrate, "configure_logging", lambda *args: None)
    assert migrate.main(["gateway=cic_gateway.migrations"]) == 1
