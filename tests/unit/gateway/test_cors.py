"""CORS for the origins in CIC_CORS_ORIGINS: allowed origins get the headers on answers and
preflights (every route, admin ones included), other origins get none, and every preflight
answer carries x-request-id like any other answer."""

import pytest
from multidict import CIMultiDict

from cic_common.settings import SettingsError, parse_settings
from cic_gateway.config import GatewaySettings
from cic_gateway.cors import ALLOWED_HEADERS, EXPOSED_HEADERS, PREFLIGHT_MAX_AGE_S
from tests.unit.gateway.conftest import Gateway, StartGateway

APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
# What the openai JavaScript SDK sends from a browser besides the body.
SDK_HEADERS = (
    "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
    "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)


@pytest.fixture
async def cors_gateway(start_gateway: StartGateway) -> Gateway:
    """A gateway allowing one browser origin (and a local one)."""
    return await start_gateway(CIC_CORS_ORIGINS=f" {APP_ORIGIN}/ , http://localhost:3000")


async def _preflight(
    gateway: Gateway, path: str, method: str, origin: str, headers: str = SDK_HEADERS
) -> tuple[int, CIMultiDict[str], dict | None]:
    request_headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }
    async with gateway.session.options(gateway.url + path, headers=request_headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers.copy(), body


def _route_templates(gateway: Gateway) -> list[tuple[str, str]]:
    """``(path, method)`` of every route but the preflights, ids filled in."""
    return [
        (route.resource.canonical.replace("{", "x").replace("}", ""), route.method)
        for route in gateway.app.router.routes()
        if route.method != "OPTIONS" and route.resource is not None
    ]


async def test_an_allowed_origin_reads_answers_and_their_headers(cors_gateway: Gateway) -> None:
    _, _, key = await cors_gateway.new_key()
    headers = {"Origin": APP_ORIGIN, "Authorization": f"Bearer {key}"}
    async with cors_gateway.session.get(cors_gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert exposed == set(EXPOSED_HEADERS)
        assert "Origin" in resp.headers.getall("Vary")
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert resp.headers["x-request-id"]

    # Errors too, so that a browser app can show them.
    async with cors_gateway.session.get(
        cors_gateway.url + "/v1/models", headers={"Origin": "http://localhost:3000"}
    ) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_another_origin_gets_no_cors_headers(cors_gateway: Gateway) -> None:
    _, _, key = await cors_gateway.new_key()
    headers = {"Origin": OTHER_ORIGIN, "Authorization": f"Bearer {key}"}
    async with cors_gateway.session.get(cors_gateway.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200
        assert not any(h.lower().startswith("access-control-") for h in resp.headers)
        assert resp.headers["x-request-id"]

    status, headers, body = await _preflight(
        cors_gateway, "/v1/chat/completions", "POST", OTHER_ORIGIN
    )
    assert status == 403
    assert body is not None and body["error"]["type"] == "invalid_request_error"
    assert not any(h.lower().startswith("access-control-") for h in headers)
    assert headers["x-request-id"]


async def test_preflight_allows_the_sdk_headers_on_every_route(cors_gateway: Gateway) -> None:
    routes = _route_templates(cors_gateway)
    assert ("/v1/chat/completions", "POST") in routes and (
        "/admin/keys/xkey_id",
        "DELETE",
    ) in routes
    for path, method in routes:
        status, headers, _ = await _preflight(cors_gateway, path, method, APP_ORIGIN)
        assert status == 200, (path, method)
        assert headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert headers["Access-Control-Allow-Methods"] == method
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed == {h.strip() for h in SDK_HEADERS.split(",")}
        assert headers["Access-Control-Max-Age"] == str(PREFLIGHT_MAX_AGE_S)
        assert headers["x-request-id"]

    # The admin API's own headers, and a preflight never reaches the admin guard's audit log.
    status, headers, _ = await _preflight(
        cors_gateway, "/admin/tenants", "POST", APP_ORIGIN, "x-admin-token, content-type"
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    status, audit = await cors_gateway.admin("GET", "/admin/audit?limit=1000")
    assert status == 200
    assert all(entry["method"] != "OPTIONS" for entry in audit["data"])


async def test_preflight_refuses_unknown_headers_and_methods(cors_gateway: Gateway) -> None:
    status, headers, _ = await _preflight(
        cors_gateway, "/v1/chat/completions", "POST", APP_ORIGIN, "authorization, x-custom-thing"
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await _preflight(cors_gateway, "/v1/models", "DELETE", APP_ORIGIN)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_without_cic_cors_origins_no_origin_is_allowed(gateway: Gateway) -> None:
    status, headers, body = await _preflight(gateway, "/v1/chat/completions", "POST", APP_ORIGIN)
    assert status == 403 and body is not None and "error" in body
    assert "Access-Control-Allow-Origin" not in headers and headers["x-request-id"]
    async with gateway.session.get(
        gateway.url + "/healthz", headers={"Origin": APP_ORIGIN}
    ) as resp:
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_cic_cors_origins_is_parsed_and_checked() -> None:
    base = {
        "DATABASE_URL": "postgresql://db/cic",
        "REDIS_URL": "redis://redis:6379/0",
        "ADMIN_API_TOKEN": "t" * 40,
        "SCHEDULER_ADDR": "scheduler:50051",
        "BILLING_ADDR": "billing:50052",
        "ORCHESTRATOR_ADDR": "orchestrator:50053",
    }
    assert parse_settings(GatewaySettings, base).cic_cors_origins == ()
    settings = parse_settings(
        GatewaySettings, {**base, "CIC_CORS_ORIGINS": "https://App.Example.com/,,http://[::1]:8000"}
    )
    assert settings.cic_cors_origins == ("https://app.example.com", "http://[::1]:8000")
    assert parse_settings(GatewaySettings, {**base, "CIC_CORS_ORIGINS": "*"}).cic_cors_origins == (
        "*",
    )
    for bad in (
        "app.example.com",
        "https://app.example.com/path",
        "https://u:p@host",
        "http://h:x",
    ):
        with pytest.raises(SettingsError, match="CIC_CORS_ORIGINS"):
            parse_settings(GatewaySettings, {**base, "CIC_CORS_ORIGINS": bad})


def test_the_allowed_headers_cover_the_python_sdk() -> None:
    """Every header the installed openai SDK sends on its own is allowed."""
    import openai

    client = openai.OpenAI(api_key="sk-cic-x", base_url="http://gateway/v1", organization="o")
    sent = {name.lower() for name in client.default_headers}
    sent |= {"x-stainless-retry-count", "x-stainless-read-timeout", "authorization"}
    simple = {"accept", "user-agent"}  # a browser sets these itself
    assert sent - simple <= {h.lower() for h in ALLOWED_HEADERS}
