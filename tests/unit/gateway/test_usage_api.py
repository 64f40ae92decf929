"""GET /v1/usage against the real billing service: who may read it, what it answers (the same
figures as the admin usage route, from the same GetUsage query), and its 400s. GET /docs and its
assets, served by the gateway itself."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.billing.support import RunningBilling, running_billing
from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices

MESSAGES = [{"role": "user", "content": "count my tokens"}]


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[RunningBilling]:
    async with running_billing(database_url) as running:
        yield running


async def _usage(gateway: Gateway, key: str, query: str = "") -> tuple[int, Any]:
    async with gateway.session.get(
        f"{gateway.url}/v1/usage{query}", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json()


async def _key(gateway: Gateway, tenant_id: str, role: str) -> tuple[str, str]:
    status, key = await gateway.admin(
        "POST", f"/admin/tenants/{tenant_id}/keys", {"name": role, "role": role}
    )
    assert status == 201, key
    return key["id"], key["key"]


async def test_usage_by_role_with_breakdowns(
    start_gateway: StartGateway, services: FakeServices, node, billing: RunningBilling
) -> None:
    services.scheduler.add_node("n-1", "cic-sim-small", node.endpoint)
    gateway = await start_gateway(BILLING_ADDR=billing.address)
    tenant_id, developer_id, developer = await gateway.new_key()
    admin_id, admin = await _key(gateway, tenant_id, "admin")
    _, reader = await _key(gateway, tenant_id, "read-only")
    for key in (developer, admin, developer):
        async with gateway.session.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "cic-sim-small", "messages": MESSAGES, "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            assert resp.status == 200

    deadline = time.monotonic() + 10
    while len(await billing.ledger_rows()) < 3:
        assert time.monotonic() < deadline, "the three requests never reached the ledger"
        await asyncio.sleep(0.05)
    rows = await billing.ledger_rows()

    status, body = await _usage(gateway, developer)
    assert (status, body["error"]["type"]) == (403, "permission_error")

    status, totals = await _usage(gateway, reader)
    assert status == 200, totals
    assert totals["requests"] == 3 and totals["data"] == [] and totals["group_by"] is None
    assert totals["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert totals["cost_micro_usd"] == sum(r["cost_micro_usd"] for r in rows)
    assert totals["cost_usd"] == round(totals["cost_micro_usd"] / 1_000_000, 6)
    # The operator's view of the same tenant: the same figures.
    _, operator = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/usage")
    for field in ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd"):
        assert operator[field] == totals[field], field

    status, by_key = await _usage(gateway, admin, "?group_by=key")
    assert status == 200
    assert sorted((row["group"], row["requests"]) for row in by_key["data"]) == sorted(
        [(developer_id, 2), (admin_id, 1)]
    )
    status, by_model = await _usage(gateway, admin, "?group_by=model")
    assert [(row["group"], row["requests"]) for row in by_model["data"]] == [("cic-sim-small", 3)]
    status, by_environment = await _usage(gateway, admin, "?group_by=environment")
    assert [row["requests"] for row in by_environment["data"]] == [3]
    assert by_environment["data"][0]["group"].startswith("env_")
    status, by_day = await _usage(gateway, admin, "?group_by=day&start=2000-01-01T00:00:00Z")
    [day] = by_day["data"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T00:00:00Z", day["group"])
    assert (day["requests"], day["cost_micro_usd"]) == (3, totals["cost_micro_usd"])
    assert by_day["start"] == "2000-01-01T00:00:00+00:00"

    # A range that holds none of it (an offset whose '+' arrived as a space counts too).
    status, empty = await _usage(gateway, admin, "?start=2001-01-01T00:00:00 00:00&end=2001-02-01")
    assert status == 200, empty
    assert (empty["requests"], empty["cost_usd"]) == (0, 0)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?group_by=week", "group_by"),
        ("?start=yesterday", "start"),
        ("?end=2025-13-01", "end"),
        ("?start=2025-02-01&end=2025-01-01", "start"),
        ("?start=" + "9" * 100, "start"),
    ],
)
async def test_bad_parameters_are_400(gateway: Gateway, query: str, param: str) -> None:
    tenant_id, _, _ = await gateway.new_key()
    _, admin = await _key(gateway, tenant_id, "admin")
    status, body = await _usage(gateway, admin, query)
    assert status == 400, body
    assert body["error"]["param"] == param
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_usage_needs_a_key(gateway: Gateway) -> None:
    async with gateway.session.get(gateway.url + "/v1/usage") as resp:
        assert resp.status == 401


async def test_docs_and_their_assets_come_from_the_gateway(gateway: Gateway) -> None:
    async with gateway.session.get(gateway.url + "/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "script-src 'self';" in csp and "default-src 'none'" in csp
    assert "http://" not in page and "https://" not in page and "<script>" not in page
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/docs/assets/swagger-ui-bundle.js" in sources
    for source in sources:
        async with gateway.session.get(gateway.url + source) as resp:
            assert resp.status == 200, source
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.read()
            assert body, source
    async with gateway.session.get(gateway.url + "/docs/assets/cic-docs.js") as resp:
        assert '"/openapi.json"' in await resp.text()
    async with gateway.session.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200
    for missing in ("/docs/assets/swagger-editor.js", "/docs/assets/..%2Fopenapi.yaml"):
        async with gateway.session.get(gateway.url + missing) as resp:
            assert resp.status == 404, missing
            assert (await resp.json())["error"]["code"] == "unknown_url"
