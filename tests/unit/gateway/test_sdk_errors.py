"""Every error status of the CONTRACT as the official ``openai`` SDK sees it, sync and async: the
exception class it raises, the status, and OpenAI's error fields (one test per status)."""

import openai
import orjson
import pytest

from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sdk import KINDS, Sdk
from tests.unit.gateway.sims import SIM_MODEL, Sim, SimFarm

MESSAGES = [{"role": "user", "content": "hello there"}]

BAD_FIELDS = [
    ({"model": ""}, "model"),
    ({"model": ["a"]}, "model"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
]


async def _setup(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm, **settings: str
) -> tuple[Gateway, Sim]:
    sim = await sims.start()
    services.scheduler.add_node("sim-1", SIM_MODEL, sim.endpoint)
    return await start_gateway(**settings), sim


async def _clients(gateway: Gateway) -> list[tuple[Sdk, str]]:
    """A sync and an async client, each with a key of its own tenant: (client, tenant id)."""
    clients = []
    for kind in KINDS:
        tenant_id, _, key = await gateway.new_key()
        clients.append((Sdk(kind, f"{gateway.url}/v1", key), tenant_id))
    return clients


def _chat(**fields):
    return lambda c: c.chat.completions.create(
        **{"model": SIM_MODEL, "messages": MESSAGES, **fields}
    )


def _raw_post(body: bytes):
    return lambda c: c.post(
        "/chat/completions",
        cast_to=object,
        content=body,
        options={"headers": {"Content-Type": "application/json"}},
    )


async def test_400_bad_json(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, _ in await _clients(gateway):
        for body in (b'{"model": "cic-sim-small", "messages": [', b"[1, 2]", b""):
            with pytest.raises(openai.BadRequestError) as failure:
                await sdk.run(_raw_post(body))
            assert failure.value.status_code == 400
            assert failure.value.type == "invalid_request_error"
            assert "JSON" in failure.value.message


async def test_400_bad_fields_name_the_param(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, sim = await _setup(start_gateway, services, sims)
    for sdk, _ in await _clients(gateway):
        for fields, param in BAD_FIELDS:
            with pytest.raises(openai.BadRequestError) as failure:
                await sdk.run(_chat(extra_body=fields))
            assert failure.value.param == param, (sdk.kind, fields)
            assert failure.value.type == "invalid_request_error"
            if param != "model":
                codes = ("invalid_type", "empty_array", "integer_below_min_value")
                assert failure.value.code in codes
    assert "/v1/chat/completions" not in (await sim.stats())["requests"]


async def test_400_from_the_node_reaches_the_client(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, _ in await _clients(gateway):
        with pytest.raises(openai.BadRequestError) as failure:
            await sdk.run(_chat(max_tokens=100_000))  # over the simulated model's context
        assert "context length" in failure.value.message


async def test_401_unknown_key(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, _ in await _clients(gateway):
        wrong = Sdk(sdk.kind, sdk.base_url, sdk.api_key[:-4] + "AAAA")
        with pytest.raises(openai.AuthenticationError) as failure:
            await wrong.run(_chat())
        assert (failure.value.status_code, failure.value.code) == (401, "invalid_api_key")


async def test_403_suspended_tenant(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, tenant_id in await _clients(gateway):
        patch = {"status": "suspended"}
        assert (await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", patch))[0] == 200
        with pytest.raises(openai.PermissionDeniedError) as failure:
            await sdk.run(_chat())
        assert (failure.value.status_code, failure.value.code) == (403, "tenant_suspended")


async def test_404_unknown_model(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, _ in await _clients(gateway):
        with pytest.raises(openai.NotFoundError) as failure:
            await sdk.run(_chat(model="no-such-model"))
        assert (failure.value.code, failure.value.param) == ("model_not_found", "model")


async def test_413_body_too_large(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims, MAX_BODY_BYTES="4096")
    for sdk, _ in await _clients(gateway):
        with pytest.raises(openai.APIStatusError) as failure:
            await sdk.run(_chat(messages=[{"role": "user", "content": "word " * 2000}]))
        assert failure.value.status_code == 413
        assert failure.value.code == "request_too_large"


async def test_429_rate_limited(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    for sdk, tenant_id in await _clients(gateway):
        patch = {"rpm_limit": 1}
        assert (await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", patch))[0] == 200
        await sdk.run(_chat(max_tokens=1))
        with pytest.raises(openai.RateLimitError) as failure:
            await sdk.run(_chat(max_tokens=1))
        assert failure.value.status_code == 429
        assert int(failure.value.response.headers["retry-after"]) >= 1


async def test_502_node_failed(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, sim = await _setup(start_gateway, services, sims)
    await sim.configure(fail_rate=1.0)
    for sdk, _ in await _clients(gateway):
        with pytest.raises(openai.InternalServerError) as failure:
            await sdk.run(_chat())
        assert (failure.value.status_code, failure.value.code) == (502, "upstream_error")
        assert failure.value.type == "server_error"
        body = orjson.loads(failure.value.response.content)
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        text = failure.value.response.text
        assert sim.endpoint not in text and "Traceback" not in text and sdk.api_key not in text


async def test_503_no_ready_node(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, _ = await _setup(start_gateway, services, sims)
    services.scheduler.add_node("cold", "cold-model", "http://127.0.0.1:9", ready=False)
    for sdk, _ in await _clients(gateway):
        with pytest.raises(openai.InternalServerError) as failure:
            await sdk.run(_chat(model="cold-model"))
        assert (failure.value.status_code, failure.value.code) == (503, "no_ready_node")


async def test_504_node_timed_out(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    gateway, sim = await _setup(start_gateway, services, sims, UPSTREAM_READ_TIMEOUT_S="0.1")
    await sim.configure(hang=True)
    for sdk, _ in await _clients(gateway):
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as failure:
                await sdk.run(_chat(stream=stream))
            assert (failure.value.status_code, failure.value.code) == (504, "upstream_timeout")
