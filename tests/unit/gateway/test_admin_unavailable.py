"""The admin API (and the tenant API) when what stands behind the gateway is down: a gRPC service
refusing connections or never answering, Postgres closed or gone. Every call is answered 503 in
OpenAI's error shape, quickly, without a traceback, and audited with its result."""

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from cic_gateway.resources import DB
from tests.support.net import free_port
from tests.unit.gateway.conftest import ADMIN_TOKEN, MODEL, Gateway, StartGateway
from tests.unit.gateway.tcp_relay import TcpRelay

# A hang fails the test instead of stalling it.
GUARD = aiohttp.ClientTimeout(total=15)
NODE_CALLS = [
    ("GET", "/admin/nodes", None, "scheduler"),
    ("POST", "/admin/nodes", {"endpoint": "http://10.0.0.9:8000", "model": "m"}, "orchestrator"),
    ("POST", "/admin/nodes/launch", {"model": "m", "accelerators": "H100:1"}, "orchestrator"),
    ("DELETE", "/admin/nodes/node-1", None, "orchestrator"),
]


async def _call(gateway: Gateway, method: str, path: str, body=None, **headers: str):
    headers = headers or gateway.admin_headers()
    async with gateway.session.request(
        method, gateway.url + path, json=body, headers=headers, timeout=GUARD
    ) as resp:
        return resp.status, await resp.json(), await resp.text()


async def _audit(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT *, row_to_json(a)::text AS whole FROM gateway.audit_log a")
    finally:
        await conn.close()


def _assert_unavailable(status: int, answer: dict, text: str, service: str | None = None) -> None:
    assert status == 503, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "server_error"
    if service is not None:
        assert service in answer["error"]["message"]
    for leak in ("Traceback", "127.0.0.1", "asyncpg", "grpc"):
        assert leak not in text


async def test_services_refusing_connections_answer_503_and_are_audited(
    start_gateway: StartGateway, database_url: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    gateway = await start_gateway(
        SCHEDULER_ADDR=closed, BILLING_ADDR=closed, ORCHESTRATOR_ADDR=closed
    )
    tenant_id, _, key = await gateway.new_key()
    calls = [*NODE_CALLS, ("GET", f"/admin/tenants/{tenant_id}/usage", None, "billing")]
    for method, path, body, service in calls:
        _assert_unavailable(*await _call(gateway, method, path, body), service)

    tenant = {"Authorization": f"Bearer {key}"}
    _assert_unavailable(*await _call(gateway, "GET", "/v1/models", **tenant), "scheduler")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    status, answer, _ = await _call(gateway, "POST", "/v1/chat/completions", chat, **tenant)
    # Billing never answered, so the model catalog never loaded: the gateway fails closed.
    assert (status, answer["error"]["code"]) == (503, "catalog_unavailable")

    rows = [r for r in await _audit(database_url) if r["status"] == 503]
    assert [(r["method"], r["path"]) for r in rows] == [(m, p) for m, p, _, _ in calls]
    fingerprint = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]
    assert {(r["actor"], r["source"]) for r in rows} == {(f"admin:{fingerprint}", "127.0.0.1")}


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a hung service)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.transport.abort()


async def test_a_service_that_never_answers_is_503_at_the_grpc_deadline(
    start_gateway: StartGateway, silent_port: int
) -> None:
    hung = f"127.0.0.1:{silent_port}"
    gateway = await start_gateway(
        SCHEDULER_ADDR=hung, BILLING_ADDR=hung, ORCHESTRATOR_ADDR=hung, GRPC_TIMEOUT_S="0.3"
    )
    tenant_id, _, _ = await gateway.new_key()
    calls = [*NODE_CALLS, ("GET", f"/admin/tenants/{tenant_id}/usage", None, "billing")]
    answers = await asyncio.gather(*(_call(gateway, m, p, b) for m, p, b, _ in calls))
    for (_, _, _, service), answer in zip(calls, answers, strict=True):
        _assert_unavailable(*answer, service)


async def test_postgres_closed_is_503_on_admin_and_tenant_routes(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    tenant_id, _, unused_key = await gateway.new_key()
    await gateway.app[DB].close()
    caplog.set_level(logging.WARNING)
    for method, path, body in [
        ("GET", "/admin/tenants", None),
        ("POST", "/admin/tenants", {"name": "n", "email": "n@example.com"}),
        ("GET", f"/admin/tenants/{tenant_id}", None),
        ("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"}),
        ("GET", f"/admin/tenants/{tenant_id}/keys", None),
        ("DELETE", "/admin/keys/key_x", None),
        ("GET", "/admin/audit", None),
    ]:
        status, answer, text = await _call(gateway, method, path, body)
        _assert_unavailable(status, answer, text)
        assert answer["error"]["code"] == "service_unavailable"
    tenant = {"Authorization": f"Bearer {unused_key}"}
    _assert_unavailable(*await _call(gateway, "GET", "/v1/models", **tenant))
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the logs either"


@pytest.fixture
async def postgres_relay(database_url: str) -> AsyncIterator[TcpRelay]:
    relay = await TcpRelay(database_url).start()
    yield relay
    await relay.cut()


async def test_postgres_going_away_and_coming_back(
    start_gateway: StartGateway, postgres_relay: TcpRelay, database_url: str
) -> None:
    gateway = await start_gateway(DATABASE_URL=postgres_relay.url)
    _, _, key = await gateway.new_key()
    await postgres_relay.cut()

    status, answer, text = await _call(gateway, "GET", "/admin/tenants")
    _assert_unavailable(status, answer, text)
    status, answer, text = await _call(gateway, "GET", "/v1/models", Authorization=f"Bearer {key}")
    _assert_unavailable(status, answer, text)
    async with gateway.session.get(gateway.url + "/readyz", timeout=GUARD) as resp:
        assert resp.status == 503 and (await resp.json())["failed"] == ["postgres"]

    await postgres_relay.restore()
    status, tenants, _ = await _call(gateway, "GET", "/admin/tenants")
    assert status == 200 and len(tenants["data"]) == 1
    rows = await _audit(database_url)
    assert [(r["path"], r["status"]) for r in rows][-1] == ("/admin/tenants", 200)
    assert all(ADMIN_TOKEN not in r["whole"] for r in rows)


async def _models(gateway: Gateway, key: str) -> tuple[int, dict, str]:
    return await _call(gateway, "GET", "/v1/models", Authorization=f"Bearer {key}")


async def test_keys_seen_before_postgres_went_away_are_served_as_they_last_were(
    start_gateway: StartGateway, postgres_relay: TcpRelay
) -> None:
    gateway = await start_gateway(DATABASE_URL=postgres_relay.url, KEY_CACHE_TTL_S="0.2")
    _, _, seen = await gateway.new_key()
    _, revoked_id, revoked = await gateway.new_key()
    _, _, never_seen = await gateway.new_key()
    for key in (seen, revoked):
        assert (await _models(gateway, key))[0] == 200
    status, _ = await gateway.admin("DELETE", f"/admin/keys/{revoked_id}")
    assert status == 204
    await postgres_relay.cut()
    await asyncio.sleep(0.5)  # past the cache's time-to-live: every lookup goes to Postgres

    status, answer, _ = await _models(gateway, seen)
    assert status == 200, answer
    # A revoked key is forgotten everywhere, never served from the last known answers.
    _assert_unavailable(*await _models(gateway, revoked))
    _assert_unavailable(*await _models(gateway, never_seen))
    stale = gateway.registry.get_sample_value(
        "cic_gateway_key_cache_lookups_total", {"result": "stale"}
    )
    assert stale is not None and stale >= 1

    await postgres_relay.restore()
    assert (await _models(gateway, never_seen))[0] == 200


async def test_serving_last_known_keys_can_be_turned_off(
    start_gateway: StartGateway, postgres_relay: TcpRelay
) -> None:
    gateway = await start_gateway(
        DATABASE_URL=postgres_relay.url, KEY_CACHE_TTL_S="0.2", KEY_CACHE_STALE_S="0"
    )
    _, _, key = await gateway.new_key()
    assert (await _models(gateway, key))[0] == 200
    await postgres_relay.cut()
    await asyncio.sleep(0.5)
    _assert_unavailable(*await _models(gateway, key))
