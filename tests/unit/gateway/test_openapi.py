"""GET /openapi.json: a valid OpenAPI 3.1 document with exactly the app's routes, and the edge
behaviour it promises on every route (413 over MAX_BODY_BYTES, x-request-id on every answer)."""

from typing import Any

import orjson
import pytest
import schemathesis
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from cic_gateway import openapi
from cic_gateway.app import create_app
from cic_gateway.openapi import OPENAPI_DOCUMENT, load_document, operations
from tests.unit.gateway.conftest import ADMIN_TOKEN, Gateway, StartGateway, gateway_settings

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
SMALL_BODY_LIMIT = 1024


def _router_operations(app: web.Application) -> set[tuple[str, str]]:
    """``(path, METHOD)`` of every route of ``app`` but the CORS preflights and the dashboard's
    HTML pages (for browsers, not API clients)."""
    return {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None
        and route.handler.__name__ != "_preflight_handler"
        and not route.resource.canonical.startswith("/dashboard")
    }


def _response(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response.get("$ref")
    return document["components"]["responses"][ref.rsplit("/", 1)[1]] if ref else response


def test_every_route_is_in_the_document_and_nothing_else() -> None:
    settings = gateway_settings("postgresql://db/cic", "redis://redis:6379/0", "grpc:50051")
    app = create_app(settings, registry=CollectorRegistry())
    documented = {(path, method) for path, method, _ in operations(load_document())}
    assert documented == _router_operations(app)
    assert ("/openapi.json", "GET") in documented


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema


def test_a_name_given_twice_in_the_document_is_refused_not_silently_replaced() -> None:
    """Two schemas of one name once hid each other (the last one won, unseen)."""
    text = "a: &x {k: 1}\nb:\n  <<: *x\n  j: 2\ncomponents:\n  schemas:\n    S: {}\n    S: {}\n"
    with pytest.raises(yaml.YAMLError, match=r"repeats the key\(s\) \['S'\]"):
        yaml.load(text, Loader=openapi._Loader)  # noqa: S506 (a safe loader)
    distinct = text.replace("    S: {}\n    S", "    S: {}\n    T")
    loaded = yaml.load(distinct, Loader=openapi._Loader)  # noqa: S506 (a safe loader)
    assert loaded["b"] == {"k": 1, "j": 2} and set(loaded["components"]["schemas"]) == {"S", "T"}


def test_every_answer_names_its_headers_and_errors_have_openai_shape() -> None:
    document = load_document()
    for path, method, operation in operations(document):
        where = f"{method} {path}"
        statuses = set(operation["responses"])
        security = {
            name for need in operation.get("security", document["security"]) for name in need
        }
        if path.startswith("/admin/"):
            assert security == {"adminToken", "adminBearer"}, where
            assert "401" in statuses, where
        elif path.startswith("/v1/"):
            assert security == {"apiKey"}, where
            assert {"401", "403", "429"} <= statuses, where
        if method in ("POST", "PATCH"):
            assert {"400", "413"} <= statuses, where
        for status, declared in operation["responses"].items():
            response = _response(document, declared)
            assert response["headers"]["x-request-id"] == {
                "$ref": "#/components/headers/RequestId"
            }, (where, status)
            if int(status) >= 400 and path != "/readyz":
                assert response["content"]["application/json"]["schema"] == ERROR_SCHEMA
    rate_limited = document["components"]["responses"]["RateLimited"]["headers"]
    assert {"retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens"} <= set(
        rate_limited
    )


async def test_openapi_json_is_the_document_built_at_start_up(gateway: Gateway) -> None:
    async with gateway.session.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers["x-request-id"]
        body = await resp.read()
    assert body == gateway.app[OPENAPI_DOCUMENT]
    assert orjson.loads(body) == load_document()


def _credentials(document: dict[str, Any], operation: dict[str, Any], key: str) -> dict[str, str]:
    security = {name for need in operation.get("security", document["security"]) for name in need}
    if "apiKey" in security:
        return {"Authorization": f"Bearer {key}"}
    return {"X-Admin-Token": ADMIN_TOKEN}


async def test_a_body_over_max_body_bytes_is_413_on_every_post_and_patch_route(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(MAX_BODY_BYTES=str(SMALL_BODY_LIMIT))
    tenant_id, _, key = await gateway.new_key(role="admin")  # may call every tenant route
    _, environments = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    ids = {
        "{tenant_id}": tenant_id,
        "{environment_id}": environments["data"][0]["id"],
        "{channel_id}": "nch_0123456789abcdef",
    }
    document = load_document()
    big = orjson.dumps({"name": "x" * SMALL_BODY_LIMIT, "model": "m"})
    checked = []
    for path, method, operation in operations(document):
        if method not in ("POST", "PATCH"):
            continue
        url = gateway.url + path
        for name, value in ids.items():
            url = url.replace(name, value)
        headers = {**_credentials(document, operation, key), "Content-Type": "application/json"}
        async with gateway.session.request(method, url, data=big, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 413, (method, path, body)
            assert body["error"]["code"] == "request_too_large"
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert resp.headers["x-request-id"]
        checked.append(path)
    assert "/v1/chat/completions" in checked and "/admin/tenants/{tenant_id}" in checked

    async def chunks():  # no Content-Length: the limit holds while the body is read
        for _ in range(4):
            yield b" " * SMALL_BODY_LIMIT

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with gateway.session.post(
        gateway.url + "/v1/embeddings", data=chunks(), headers=headers
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_x_request_id_is_on_every_answer_even_without_a_route(gateway: Gateway) -> None:
    cases = [
        ("GET", "/no/such/route", {}, 404),
        ("DELETE", "/v1/chat/completions", {}, 405),
        ("GET", "/v1/models", {}, 401),
        ("GET", "/admin/tenants", {"X-Admin-Token": "wrong"}, 401),
        ("POST", "/v1/chat/completions", {"Authorization": "Bearer sk-cic-nope"}, 401),
        ("GET", "/healthz", {}, 200),
    ]
    for method, path, headers, status in cases:
        async with gateway.session.request(method, gateway.url + path, headers=headers) as resp:
            assert resp.status == status, (method, path)
            assert resp.headers["x-request-id"].startswith("req_"), (method, path)
            if status >= 400:
                assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
        mine = {**headers, "X-Request-Id": "client-chosen-id-1"}
        async with gateway.session.request(method, gateway.url + path, headers=mine) as resp:
            assert resp.headers["x-request-id"] == "client-chosen-id-1", (method, path)
