"""The model catalog and regions through the gateway in front of the real billing service (its
gRPC server on port 0, Postgres): admin CRUD, the catalog cache on every replica (Redis pub/sub),
the 404 and 400 of the tenant API, GET /v1/models/{model}, and a region's cost multiplier in
the ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import openai
import orjson
import pytest

from cic.billing.v1 import billing_pb2
from cic.scheduler.v1 import scheduler_pb2
from cic_gateway.catalog import Catalog
from cic_gateway.resources import CATALOG
from tests.support.teardown import stop_or_explain
from tests.unit.billing.support import RunningBilling, running_billing
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices, catalog_model

MESSAGES = [{"role": "user", "content": "hello there"}]
DEADLINE_S = 10.0


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[RunningBilling]:
    async with running_billing(database_url) as running:
        yield running


@pytest.fixture
async def start_real(
    start_gateway: StartGateway, billing: RunningBilling
) -> Callable[..., Awaitable[Gateway]]:
    """Starts a gateway whose billing is the real one (the scheduler stays the fake)."""

    async def start(**extra: str) -> Gateway:
        return await start_gateway(BILLING_ADDR=billing.address, **extra)

    return start


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _get_model(gateway: Gateway, key: str, name: str) -> int:
    async with gateway.session.get(
        f"{gateway.url}/v1/models/{name}", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status


async def _chat(gateway: Gateway, key: str, model: str, path: str = "/v1/chat/completions"):
    body = {"model": model, "messages": MESSAGES, "input": "x", "prompt": "x", "max_tokens": 3}
    async with gateway.session.post(
        gateway.url + path, data=orjson.dumps(body), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json()


NEW_MODEL = {
    "name": "org/llama-8b",
    "type": "chat",
    "context_length": 8192,
    "price_prompt_per_mtok_usd": "0.15",
    "price_completion_per_mtok_usd": 0.6,
}


async def test_admin_model_crud_is_billings_catalog_and_its_prices(start_real) -> None:
    gateway = await start_real()
    status, made = await gateway.admin("POST", "/admin/models", NEW_MODEL)
    assert status == 201, made
    assert made["name"] == "org/llama-8b" and made["type"] == "chat"
    assert (made["prompt_micro_usd_per_mtok"], made["completion_micro_usd_per_mtok"]) == (
        150_000,
        600_000,
    )
    assert (made["price_prompt_per_mtok_usd"], made["price_completion_per_mtok_usd"]) == (0.15, 0.6)

    status, listed = await gateway.admin("GET", "/admin/models")
    assert [m["name"] for m in listed["data"]] == ["cic-sim-small", "org/llama-8b"]
    # /admin/prices is a view of the same prices.
    status, prices = await gateway.admin("GET", "/admin/prices")
    assert {
        "model": "org/llama-8b",
        "prompt_micro_usd_per_mtok": 150_000,
        "completion_micro_usd_per_mtok": 600_000,
    }.items() <= next(p for p in prices["data"] if p["model"] == "org/llama-8b").items()

    status, changed = await gateway.admin(
        "PATCH", "/admin/models/org/llama-8b", {"type": "completion", "context_length": None}
    )
    assert status == 200, changed
    assert (changed["type"], changed["context_length"]) == ("completion", 8192)

    assert (await gateway.admin("DELETE", "/admin/models/org/llama-8b"))[0] == 204
    status, missing = await gateway.admin("DELETE", "/admin/models/org/llama-8b")
    assert (status, missing["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("change", "param", "text"),
    [
        ({"price_prompt_per_mtok_usd": "0.0000001"}, "price_prompt_per_mtok_usd", "6 decimal"),
        ({"price_prompt_per_mtok_usd": -1}, "price_prompt_per_mtok_usd", "negative"),
        ({"price_prompt_per_mtok_usd": "1e3"}, "price_prompt_per_mtok_usd", "decimal number"),
        ({"price_completion_per_mtok_usd": True}, "price_completion_per_mtok_usd", "number"),
        ({"type": "image"}, "type", "chat"),
        ({"context_length": 0}, "context_length", "greater than or equal to 1"),
        ({"name": ""}, "name", "at least 1"),
        ({"extra": 1}, "extra", "not permitted"),
    ],
)
async def test_bad_models_are_400_naming_the_field(
    start_real, change: dict[str, object], param: str, text: str
) -> None:
    gateway = await start_real()
    status, body = await gateway.admin("POST", "/admin/models", {**NEW_MODEL, **change})
    assert status == 400, body
    assert body["error"]["param"] == param and text in body["error"]["message"]


async def test_conflicts_and_unknown_names(start_real) -> None:
    gateway = await start_real()
    assert (await gateway.admin("POST", "/admin/models", NEW_MODEL))[0] == 201
    status, body = await gateway.admin("POST", "/admin/models", NEW_MODEL)
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await gateway.admin("PATCH", "/admin/models/nope", {"context_length": 5})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await gateway.admin("PATCH", "/admin/models/org/llama-8b", {"name": "other"})
    assert (status, body["error"]["param"]) == (400, "name")


async def test_a_catalog_change_reaches_every_replica_at_once(
    start_real, services: FakeServices, node
) -> None:
    services.scheduler.add_node("n-1", "org/llama-8b", node.endpoint)
    # Replica b reloads on its own only once an hour: what it sees comes through Redis.
    a, b = await start_real(), await start_real(CATALOG_REFRESH_S="3600")
    _, _, key = await a.new_key()
    assert await _get_model(b, key, "org/llama-8b") == 404
    status, body = await _chat(b, key, "org/llama-8b")
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    assert "The model `org/llama-8b` does not exist" in body["error"]["message"]

    assert (await a.admin("POST", "/admin/models", NEW_MODEL))[0] == 201

    async def served() -> bool:
        return await _get_model(b, key, "org/llama-8b") == 200

    await _eventually(served, "replica b to see the new model")
    assert (await _chat(b, key, "org/llama-8b"))[0] == 200

    assert (await a.admin("DELETE", "/admin/models/org/llama-8b"))[0] == 204

    async def gone() -> bool:
        return await _get_model(b, key, "org/llama-8b") == 404

    await _eventually(gone, "replica b to drop the model")


async def test_a_request_of_the_wrong_type_is_400(start_real, services: FakeServices, node) -> None:
    services.scheduler.add_node("n-1", "cic-sim-small", node.endpoint)
    gateway = await start_real()
    _, _, key = await gateway.new_key()
    status, body = await _chat(gateway, key, "cic-sim-small", "/v1/embeddings")
    assert status == 400, body
    assert body["error"]["code"] == "unsupported_model_type"
    assert body["error"]["param"] == "model"
    assert "is a chat model and is not served on /v1/embeddings" in body["error"]["message"]
    assert (await _chat(gateway, key, "cic-sim-small", "/v1/completions"))[0] == 200
    assert services.scheduler.picks == ["cic-sim-small"]  # the 400 never asked for a node


async def test_get_model_answers_openais_model_object(start_real) -> None:
    gateway = await start_real()
    _, _, key = await gateway.new_key()
    async with openai.AsyncOpenAI(api_key=key, base_url=f"{gateway.url}/v1") as client:
        model = await client.models.retrieve("cic-sim-small")
        assert (model.id, model.object, model.owned_by) == ("cic-sim-small", "model", "cic")
        assert model.created > 0
        assert (model.type, model.context_length) == ("chat", 4096)  # type: ignore[attr-defined]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
        assert missing.value.code == "model_not_found"
    async with gateway.session.get(f"{gateway.url}/v1/models/cic-sim-small") as resp:
        assert resp.status == 401


async def test_a_cold_catalog_fails_closed_until_billing_answers(
    start_gateway: StartGateway, services: FakeServices, node
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    services.billing.catalog_error = (grpc.StatusCode.UNAVAILABLE, "billing is down")
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    status, body = await _chat(gateway, key, MODEL)
    assert (status, body["error"]["code"]) == (503, "catalog_unavailable")
    assert services.scheduler.picks == []

    services.billing.catalog_error = None

    async def loaded() -> bool:
        return gateway.app[CATALOG].loaded

    await _eventually(loaded, "the catalog to load")
    assert (await _chat(gateway, key, MODEL))[0] == 200


async def test_a_region_multiplier_prices_the_requests_its_nodes_serve(
    start_real, services: FakeServices, node, billing: RunningBilling
) -> None:
    gateway = await start_real()
    # $10 and $20 per million tokens: 10 and 20 micro-dollars a token, so 1.5x is whole.
    status, _ = await gateway.admin(
        "POST",
        "/admin/models",
        {**NEW_MODEL, "price_prompt_per_mtok_usd": 10, "price_completion_per_mtok_usd": "20"},
    )
    assert status == 201
    status, region = await gateway.admin(
        "POST",
        "/admin/regions",
        {"code": "eu-west", "name": "Europe West", "cost_multiplier": "1.5"},
    )
    assert status == 201, region
    assert (region["cost_multiplier"], region["cost_multiplier_ppm"]) == (1.5, 1_500_000)
    services.scheduler.nodes.append(
        scheduler_pb2.Node(
            id="eu-node",
            model="org/llama-8b",
            endpoint=node.endpoint,
            state=scheduler_pb2.NODE_STATE_READY,
            healthy=True,
            labels={"region": "eu-west"},
        )
    )
    _, key_id, key = await gateway.new_key()

    async def catalog_has_it() -> bool:
        return await _get_model(gateway, key, "org/llama-8b") == 200

    await _eventually(catalog_has_it, "the new model in the catalog")
    assert (await _chat(gateway, key, "org/llama-8b"))[0] == 200
    services.scheduler.nodes[-1].labels["region"] = ""  # the same node, now in no region
    assert (await _chat(gateway, key, "org/llama-8b"))[0] == 200

    async def both_recorded() -> bool:
        return len(await billing.ledger_rows()) == 2

    await _eventually(both_recorded, "both requests in the ledger")
    rows = sorted(await billing.ledger_rows(), key=lambda r: r["region"] or "")
    home, eu = rows
    assert (home["region"], eu["region"]) == (None, "eu-west")
    assert eu["api_key_id"] == key_id
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            home["prompt_tokens"],
            home["completion_tokens"],
        )
    base = 10 * home["prompt_tokens"] + 20 * home["completion_tokens"]
    assert home["cost_micro_usd"] == base
    assert (
        eu["cost_micro_usd"]
        == base * 3 // 2
        == 15 * eu["prompt_tokens"] + 30 * eu["completion_tokens"]
    )

    status, listed = await gateway.admin("GET", "/admin/regions")
    assert [r["code"] for r in listed["data"]] == ["eu-west"]
    status, changed = await gateway.admin("PATCH", "/admin/regions/eu-west", {"cost_multiplier": 2})
    assert (status, changed["cost_multiplier_ppm"], changed["name"]) == (
        200,
        2_000_000,
        "Europe West",
    )
    bad = {"code": "x y", "name": "Bad", "cost_multiplier": 1}
    status, body = await gateway.admin("POST", "/admin/regions", bad)
    assert (status, body["error"]["param"]) == (400, "code")
    bad = {"code": "zero", "name": "Free", "cost_multiplier": 0}
    status, body = await gateway.admin("POST", "/admin/regions", bad)
    assert (status, body["error"]["param"]) == (400, "cost_multiplier")


async def test_billing_down_is_503_for_the_admin_catalog(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(BILLING_ADDR="127.0.0.1:9", GRPC_TIMEOUT_S="1")
    for method, path, body in [
        ("GET", "/admin/models", None),
        ("POST", "/admin/models", NEW_MODEL),
        ("GET", "/admin/regions", None),
    ]:
        status, answer = await gateway.admin(method, path, body)
        assert (status, answer["error"]["code"]) == (503, "service_unavailable"), path


async def test_a_replica_started_while_billing_is_down_serves_the_last_catalog(
    start_gateway: StartGateway, services: FakeServices, node
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    first = await start_gateway()  # reads the catalog from billing and keeps a copy in Redis
    _, _, key = await first.new_key()
    services.billing.catalog_error = (grpc.StatusCode.UNAVAILABLE, "billing is down")
    second = await start_gateway()
    assert not second.app[CATALOG].from_billing
    assert (await _chat(second, key, MODEL))[0] == 200
    status, body = await _chat(second, key, "no-such-model")
    assert (status, body["error"]["code"]) == (404, "model_not_found")

    services.billing.catalog_error = None

    async def from_billing() -> bool:
        return second.app[CATALOG].from_billing

    await _eventually(from_billing, "the replica to read billing's catalog once billing is back")


class _BillingThatFailsOnce:
    """A billing whose first ListModels fails with something other than a gRPC error."""

    def __init__(self) -> None:
        self.calls = 0

    async def ListModels(self, request: object, timeout: float) -> object:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("not a gRPC error")
        return billing_pb2.ListModelsResponse(models=[catalog_model("after-a-failure")])


async def test_a_reload_that_fails_unexpectedly_does_not_end_the_reload_loop(
    redis_url: str, redis_prefix: str
) -> None:
    billing = _BillingThatFailsOnce()
    catalog = Catalog(billing, redis_url, redis_prefix, refresh_s=30.0, rpc_timeout_s=1.0)  # type: ignore[arg-type]
    await catalog.start()
    try:
        await _eventually(
            lambda: _true(catalog.loaded), "the catalog loaded after a failed first attempt"
        )
        assert catalog.require("after-a-failure").type == "chat"
        assert billing.calls == 2
    finally:
        await stop_or_explain(catalog.close(), "closing the catalog", 10)


async def _true(value: bool) -> bool:
    return value
