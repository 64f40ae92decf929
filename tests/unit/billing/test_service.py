"""The service as a whole: migrations, health, and the process's start and SIGTERM."""

import asyncio
import os
import signal
import sys

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_billing.server import MIGRATIONS_PACKAGE, SCHEMA
from cic_common.db import migrate
from tests.support.net import free_port, wait_for_port
from tests.unit.billing.support import RunningBilling, running_billing, usage_event


async def _applied(database_url: str) -> list[tuple[int, str, object]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM billing.schema_migrations ORDER BY version")
        return [(r["version"], r["name"], r["applied_at"]) for r in rows]
    finally:
        await conn.close()


async def test_migrations_create_the_schema_once(database_url: str) -> None:
    async with running_billing(database_url):
        pass
    first = await _applied(database_url)
    assert [(version, name) for version, name, _ in first] == [
        (1, "0001_usage_ledger.sql"),
        (2, "0002_stripe.sql"),
        (3, "0003_billing_account.sql"),
        (4, "0004_catalog_regions.sql"),
        (5, "0005_notifications.sql"),
        (6, "0006_credits_budgets.sql"),
    ]

    async with running_billing(database_url):
        pass
    assert await _applied(database_url) == first

    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn, SCHEMA, MIGRATIONS_PACKAGE) == []
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'billing'"
            " ORDER BY table_name"
        )
        prices = await conn.fetch("SELECT * FROM billing.model_prices ORDER BY model")
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'billing'"
            " AND indexname = 'usage_events_tenant_finished_at_idx'"
        )
    finally:
        await conn.close()
    assert [t["table_name"] for t in tables] == [
        "budget_spend",
        "budgets",
        "credit_draws",
        "credit_grants",
        "meter_reports",
        "model_prices",
        "notification_attempts",
        "notification_channels",
        "notification_deliveries",
        "notification_events",
        "regions",
        "schema_migrations",
        "stripe_customers",
        "stripe_events",
        "tenant_billing_status",
        "usage_events",
    ]
    assert [
        (p["model"], p["prompt_micro_usd_per_mtok"], p["completion_micro_usd_per_mtok"])
        for p in prices
    ] == [("*", 500_000, 1_500_000), ("cic-sim-small", 100_000, 200_000)]
    assert "(tenant_id, finished_at)" in index


async def test_check_constraint_refuses_negative_tokens(billing: RunningBilling) -> None:
    conn = await asyncpg.connect(billing.database_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO billing.usage_events (request_id, tenant_id, model, prompt_tokens,"
                " completion_tokens, cost_micro_usd, finished_at, status_code)"
                " VALUES ('x', 't', 'm', -1, 0, 0, now(), 200)"
            )
    finally:
        await conn.close()


async def test_health_serving_and_pool_closed_after_stop(database_url: str) -> None:
    async with running_billing(database_url) as billing:
        health = health_pb2_grpc.HealthStub(billing.channel)
        for name in ("", "cic.billing.v1.BillingService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert billing.service.pool.is_closing()


async def test_process_serves_and_exits_zero_on_sigterm(database_url: str) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "DATABASE_URL": database_url,
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(metrics_port),
        "SHUTDOWN_GRACE_S": "2",
        "LOG_FORMAT": "console",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cic_billing", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        await wait_for_port(grpc_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            reply = await stub.RecordUsage(
                billing_pb2.RecordUsageRequest(events=[usage_event("from-process")]),
                timeout=10,
            )
        assert reply.recorded == 1
        await wait_for_port(metrics_port)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert b"billing stopped" in output


async def test_process_refuses_to_start_without_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cic_billing", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert errors.decode().strip() == "configuration error: DATABASE_URL is required but not set"
