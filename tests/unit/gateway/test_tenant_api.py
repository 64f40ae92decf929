"""The tenant API: auth, validation, non-streamed relay, billing, request ids, models, errors."""

import uuid

import openai
import orjson
import pytest

from cic.scheduler.v1 import scheduler_pb2
from cic_gateway.resources import DB
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.fakes import EMBED_MODEL, FakeServices

MESSAGES = [{"role": "user", "content": "one two three four"}]


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0)


async def _post(gateway: Gateway, path: str, key: str | None, body: bytes, **headers: str):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    headers.setdefault("Content-Type", "application/json")
    async with gateway.session.post(gateway.url + path, data=body, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.json()


async def test_non_streamed_chat_relays_the_node_and_bills_its_usage(gateway: Gateway) -> None:
    tenant_id, key_id, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=7
        )
    answer = raw.parse()
    assert answer.choices[0].message.content == "tok " * 7
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 7)

    sent = gateway.node.bodies[-1]
    assert sent["messages"] == MESSAGES and sent["max_tokens"] == 7 and "stream_options" not in sent
    node_headers = {k.lower(): v for k, v in gateway.node.headers[-1].items()}
    assert "authorization" not in node_headers, "the tenant's key must never reach a node"
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_") and node_headers["x-request-id"] == request_id

    (event,) = await gateway.services.billing.wait_for_events(1)
    assert event.request_id == request_id
    assert (event.tenant_id, event.api_key_id, event.model, event.node_id) == (
        tenant_id,
        key_id,
        MODEL,
        "node-a",
    )
    assert (event.prompt_tokens, event.completion_tokens) == (4, 7)
    assert event.streamed is False and event.status_code == 200
    assert event.finished_at.ToDatetime() >= event.started_at.ToDatetime()

    (release,) = await gateway.services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_SUCCESS
    assert (release.prompt_tokens, release.completion_tokens) == (4, 7)


async def test_completions_and_embeddings_are_forwarded_and_billed(gateway: Gateway) -> None:
    gateway.services.scheduler.add_node("node-e", EMBED_MODEL, gateway.node.endpoint)
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        completion = await client.completions.create(model=MODEL, prompt="a b c", max_tokens=3)
        embedding = await client.embeddings.create(model=EMBED_MODEL, input="a b c d e")
    assert completion.choices[0].text == "tok " * 3
    assert len(embedding.data[0].embedding) == 3
    events = await gateway.services.billing.wait_for_events(2)
    by_tokens = sorted((e.prompt_tokens, e.completion_tokens) for e in events)
    assert by_tokens == [(3, 3), (5, 0)]


async def test_each_request_gets_its_own_billing_id_whatever_the_client_sends(
    gateway: Gateway,
) -> None:
    _, _, key = await gateway.new_key()
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
    mine = f"client-{uuid.uuid4()}"
    first = await _post(gateway, "/v1/chat/completions", key, body, **{"X-Request-Id": mine})
    second = await _post(gateway, "/v1/chat/completions", key, body, **{"X-Request-Id": mine})
    assert first[1]["x-request-id"] == mine and second[1]["x-request-id"] == mine
    events = await gateway.services.billing.wait_for_events(2)
    ids = {e.request_id for e in events}
    assert len(ids) == 2 and all(i.startswith("req_") for i in ids)

    status, headers, _ = await _post(gateway, "/v1/chat/completions", None, body)
    assert status == 401 and headers["x-request-id"].startswith("req_")


async def test_auth_errors(gateway: Gateway) -> None:
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES})
    for key in (None, "sk-cic-" + "x" * 43, "not-a-cic-key", "sk-cic-"):
        status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
        assert status == 401, key
        assert answer["error"]["code"] == "invalid_api_key"
        assert answer["error"]["type"] == "invalid_request_error"
    assert gateway.node.bodies == []

    _, _, key = await gateway.new_key()
    async with _client(gateway, key + "x") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_bad_requests(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    cases = [
        (b"{not json", None),
        (b"[1, 2]", None),
        (orjson.dumps({"messages": MESSAGES}), "model"),
        (orjson.dumps({"model": 7, "messages": MESSAGES}), "model"),
        (orjson.dumps({"model": MODEL, "stream": True, "stream_options": "yes"}), "stream_options"),
    ]
    for body, param in cases:
        status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
        assert status == 400, body
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["param"] == param
    assert gateway.node.bodies == []
    assert gateway.services.billing.events == []


async def test_body_over_the_limit_is_413(
    start_gateway: StartGateway, services: FakeServices
) -> None:
    gateway = await start_gateway(MAX_BODY_BYTES="2048")
    _, _, key = await gateway.new_key()
    big = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 4096}]})
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, big)
    assert status == 413 and answer["error"]["code"] == "request_too_large"

    async def chunks():
        yield big[:1000]
        yield big[1000:]

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with gateway.session.post(
        gateway.url + "/v1/chat/completions", data=chunks(), headers=headers
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_unknown_model_is_404_and_a_model_without_ready_nodes_is_503(
    gateway: Gateway,
) -> None:
    gateway.services.scheduler.add_node("node-b", "cold-model", "http://127.0.0.1:9", ready=False)
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        with pytest.raises(openai.InternalServerError) as cold:
            await client.chat.completions.create(model="cold-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    assert cold.value.status_code == 503
    assert gateway.services.scheduler.releases == []


async def test_scheduler_unreachable_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(SCHEDULER_ADDR="127.0.0.1:9")
    _, _, key = await gateway.new_key()
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES})
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
    assert status == 503 and answer["error"]["code"] == "no_ready_node"
    assert "127.0.0.1" not in answer["error"]["message"]


async def test_node_failures_are_502_or_504_and_released_as_node_errors(
    start_gateway: StartGateway, services: FakeServices, node
) -> None:
    services.scheduler.add_node("node-a", MODEL, node.endpoint)
    gateway = await start_gateway(UPSTREAM_READ_TIMEOUT_S="0.3")
    _, _, key = await gateway.new_key()
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES})

    node.mode = "fail500"
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
    assert status == 502 and answer["error"]["type"] == "server_error"
    assert "engine dead" not in answer["error"]["message"]

    node.mode = "hang"
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
    assert status == 504 and answer["error"]["code"] == "upstream_timeout"

    node.mode = "bad_request"
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
    assert status == 400 and answer["message"] == "max_tokens is too large"

    outcomes = sorted(r.outcome for r in await services.scheduler.wait_for_releases(3))
    assert outcomes == [
        scheduler_pb2.OUTCOME_NODE_ERROR,
        scheduler_pb2.OUTCOME_NODE_ERROR,
        scheduler_pb2.OUTCOME_CLIENT_ERROR,
    ]
    events = await services.billing.wait_for_events(3)
    assert [e.status_code for e in events] == [502, 504, 400]


async def test_refused_connection_is_502_and_not_billed(
    start_gateway: StartGateway, services: FakeServices
) -> None:
    services.scheduler.add_node("node-gone", MODEL, "http://127.0.0.1:9")
    gateway = await start_gateway()
    _, _, key = await gateway.new_key()
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES})
    status, _, answer = await _post(gateway, "/v1/chat/completions", key, body)
    assert status == 502 and answer["error"]["code"] == "upstream_error"
    (release,) = await services.scheduler.wait_for_releases(1)
    assert release.outcome == scheduler_pb2.OUTCOME_NODE_ERROR
    assert services.billing.events == []


async def test_models_lists_models_with_a_ready_node(gateway: Gateway) -> None:
    gateway.services.scheduler.add_node("node-b", "cold-model", "http://127.0.0.1:9", ready=False)
    gateway.services.scheduler.add_node("node-c", "other-model", gateway.node.endpoint)
    _, _, key = await gateway.new_key()
    async with _client(gateway, key) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["other-model", MODEL]
    assert all(m.object == "model" and m.owned_by == "cic" for m in models.data)


async def test_unknown_routes_use_the_openai_error_shape(gateway: Gateway) -> None:
    async with gateway.session.get(gateway.url + "/v1/nothing-here") as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body == {
        "error": {
            "message": "Unknown request URL: GET /v1/nothing-here.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }
    async with gateway.session.get(gateway.url + "/v1/chat/completions") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_the_callers_trace_continues_to_the_node(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    trace_id = uuid.uuid4().hex
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
    status, _, _ = await _post(
        gateway, "/v1/chat/completions", key, body, traceparent=f"00-{trace_id}-{'1' * 16}-01"
    )
    assert status == 200
    node_headers = {k.lower(): v for k, v in gateway.node.headers[-1].items()}
    assert node_headers["traceparent"].split("-")[1] == trace_id


async def test_key_lookup_with_postgres_gone_is_503(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    await gateway.app[DB].close()
    async with gateway.session.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "service_unavailable"
