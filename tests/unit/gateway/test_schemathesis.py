"""schemathesis against a live gateway (the real app on a real port, real Postgres and Redis,
fake scheduler/billing/orchestrator, the project's vLLM simulator as the node): every operation
of GET /openapi.json, with valid and invalid requests, answers no 5xx and nothing its document
does not describe (status code, content type, body, headers; each event of a stream too).

The requests are blocking (``requests``), so they run in a worker thread while the gateway keeps
serving on the event loop. Generation is derandomized, so a run is reproducible, and bounded by
``EXAMPLES_PER_OPERATION`` (plus the document's own request examples, and ``STREAM_EXAMPLES``
generated streamed completions). Answers off that path (429, 503) are checked against the
document too, and the bugs the fuzzer found stay fixed.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cic_gateway.openapi import load_document, operations
from cic_vllm_sim.app import create_app as create_sim_app
from cic_vllm_sim.config import SimConfig
from tests.support.net import free_port
from tests.unit.gateway.conftest import ADMIN_TOKEN, Gateway, StartGateway
from tests.unit.gateway.fakes import FAKE_NODE_TOKEN, FakeServices

SIM_MODEL = "cic-sim-small"
EMBED_MODEL = "cic-sim-embed"  # /v1/embeddings takes an embedding model of the catalog
FAKE_NODE_ID = "node-0123456789ab"  # the fake orchestrator knows the ids that start with "node-"
EXAMPLES_PER_OPERATION = 20
STREAM_EXAMPLES = 8
DOCUMENT_EXAMPLES = 5  # at most; there are fewer of them
NODE_WORK_LIMITS = {"n": 2, "max_tokens": 64, "max_completion_tokens": 64}
STREAMING_PATHS = ("/v1/chat/completions", "/v1/completions")
MAX_QUERY_CHARS = 4096
GENEROUS_LIMITS = {"DEFAULT_TENANT_RPM": "1000000", "DEFAULT_TENANT_TPM": "1000000000"}
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CHECKS = [not_a_server_error, *CONFORMANCE]

# What an operation answered: (status, media type) -> count.
Outcomes = Counter[tuple[int, str]]


@dataclass(frozen=True)
class Target:
    """Where the cases go and what they carry: a tenant's key (role ``admin``: every tenant
    route) for the tenant API, the admin token for the admin API, and ids of objects that exist
    (a tenant other than the key's, and its environment, so that suspending them or revoking its
    key does not stop the run; for the tenant's own keys API, a spare key of the key's tenant)."""

    url: str
    api_key: str
    tenant_id: str
    key_id: str
    environment_id: str = ""
    own_key_id: str = ""


@dataclass
class Report:
    fuzzed: dict[tuple[str, str], Outcomes]
    failures: list[str]


@pytest.fixture
async def sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=SIM_MODEL)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def embed_sim() -> AsyncIterator[TestServer]:
    server = TestServer(create_sim_app(SimConfig(model=EMBED_MODEL)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def _credentials(operation: APIOperation, target: Target) -> dict[str, str]:
    if operation.path.startswith("/v1/"):
        return {"Authorization": f"Bearer {target.api_key}"}
    if operation.path.startswith("/admin/"):
        return {"X-Admin-Token": ADMIN_TOKEN}
    if operation.path.startswith("/internal/nodes/"):
        return {"Authorization": f"Bearer {FAKE_NODE_TOKEN}"}
    return {}


def _aimed_at_the_node(case: Case) -> Case:
    """A model the scheduler has a node for, so that the case reaches the simulator, with the
    work asked of it kept small (the run's time stays bounded; the values are still valid)."""
    body = case.body
    if isinstance(body, dict) and "model" in body:
        body["model"] = EMBED_MODEL if case.operation.path == "/v1/embeddings" else SIM_MODEL
        for field, most in NODE_WORK_LIMITS.items():
            if isinstance(body.get(field), int) and body[field] > most:
                body[field] = most
    return case


def _streamed(case: Case, usage: bool) -> Case:
    if isinstance(case.body, dict):
        case.body.update(stream=True, stream_options={"include_usage": usage})
    return case


def _known_ids(operation: APIOperation, target: Target) -> dict[str, str]:
    own = operation.path.startswith("/v1/")
    known = {
        "tenant_id": target.tenant_id,
        "key_id": target.own_key_id if own else target.key_id,
        "environment_id": target.environment_id,
        "node_id": FAKE_NODE_ID,
        "model": SIM_MODEL,  # the fake billing has its price
    }
    return {name: value for name, value in known.items() if f"{{{name}}}" in operation.path}


def _examples(operation: APIOperation, target: Target) -> st.SearchStrategy[Case] | None:
    """The document's own request examples, with ids that exist."""
    examples = operation.get_strategies_from_examples(path_parameters=_known_ids(operation, target))
    return st.one_of(examples).map(_aimed_at_the_node) if examples else None


def _cases(operation: APIOperation, target: Target) -> st.SearchStrategy[Case]:
    """Valid and invalid cases; with ids that exist as well as random ones; for the tenant API,
    with the node's model as well as random ones."""
    known = _known_ids(operation, target)
    aim = operation.path.startswith("/v1/") and operation.method.upper() == "POST"
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if known:
            strategies.append(operation.as_strategy(mode, path_parameters=known))
        if aim:
            strategies.append(operation.as_strategy(mode).map(_aimed_at_the_node))
    return st.one_of(strategies)


def _streams(operation: APIOperation) -> st.SearchStrategy[Case]:
    aimed = operation.as_strategy().map(_aimed_at_the_node)
    return st.builds(_streamed, aimed, st.booleans())


def _fuzz(
    cases: st.SearchStrategy[Case],
    examples: int,
    headers: dict[str, str],
    target: Target,
    session: requests.Session,
    outcomes: Outcomes,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case: Case) -> None:
        # aiohttp's HTTP parser answers a request line over 8190 bytes with its own plain 400,
        # before the app (and this document) sees the request.
        assume(len(urlencode(case.query or {}, doseq=True)) < MAX_QUERY_CHARS)
        response = case.call_and_validate(
            base_url=target.url, session=session, headers=headers, checks=CHECKS
        )
        media_type = response.headers.get("content-type", [""])[0].partition(";")[0]
        outcomes[(response.status_code, media_type)] += 1

    check()


def run_schemathesis(target: Target) -> Report:
    # Loaded from the live gateway; from_dict, since from_url would leave out its own URL.
    document = requests.get(target.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()
    report = Report({}, [])
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            outcomes = report.fuzzed[(operation.path, operation.method.upper())] = Counter()
            runs = [(_cases(operation, target), EXAMPLES_PER_OPERATION)]
            documented = _examples(operation, target)
            if documented is not None:
                runs.append((documented, DOCUMENT_EXAMPLES))
            if operation.path in STREAMING_PATHS:
                runs.append((_streams(operation), STREAM_EXAMPLES))
            headers = _credentials(operation, target)
            try:
                for cases, count in runs:
                    _fuzz(cases, count, headers, target, session, outcomes)
            except (Exception, BaseExceptionGroup) as err:  # reported all together below
                report.failures.append(f"{operation.label}: {err}")
    return report


async def test_the_live_gateway_keeps_to_its_openapi_document(
    start_gateway: StartGateway, services: FakeServices, sim: TestServer, embed_sim: TestServer
) -> None:
    services.scheduler.add_node("sim-1", SIM_MODEL, f"http://127.0.0.1:{sim.port}")
    services.scheduler.add_node("sim-embed", EMBED_MODEL, f"http://127.0.0.1:{embed_sim.port}")
    gateway = await start_gateway(**GENEROUS_LIMITS)  # limits on: answers carry x-ratelimit-*
    own_tenant_id, _, api_key = await gateway.new_key(role="admin")
    _, spare = await gateway.admin("POST", f"/admin/tenants/{own_tenant_id}/keys", {"name": "s"})
    tenant_id, key_id, _ = await gateway.new_key()
    _, environments = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/environments")
    target = Target(
        gateway.url, api_key, tenant_id, key_id, environments["data"][0]["id"], spare["id"]
    )

    report = await asyncio.to_thread(run_schemathesis, target)

    assert not report.failures, "\n\n".join(report.failures)
    assert set(report.fuzzed) == {(path, method) for path, method, _ in operations(load_document())}
    # The run went where it matters: every operation succeeded at least once, the inference
    # routes through the node, streams included (their events checked one by one).
    for (path, method), outcomes in report.fuzzed.items():
        assert any(200 <= status < 300 for status, _ in outcomes), (method, path, outcomes)
        if path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            assert outcomes[(200, "application/json")] > 0, (path, outcomes)
        if path in STREAMING_PATHS:
            assert outcomes[(200, "text/event-stream")] > 0, (path, outcomes)
    assert await services.billing.wait_for_events(1)


def _validate_answers(target: Target, path: str, count: int) -> list[int]:
    """Sends the document's first example for ``POST path`` ``count`` times; the statuses."""
    document = requests.get(target.url + "/openapi.json", timeout=10).json()
    operation = schemathesis.openapi.from_dict(document)[path]["POST"]
    examples = operation.definition.raw["requestBody"]["content"]["application/json"]["examples"]
    case = _aimed_at_the_node(operation.Case(body=dict(next(iter(examples.values()))["value"])))
    headers = _credentials(operation, target)
    statuses = []
    with requests.Session() as session:
        for _ in range(count):
            response = case.call_and_validate(
                base_url=target.url, session=session, headers=headers, checks=CHECKS
            )
            assert "x-ratelimit-remaining-requests" in response.headers
            statuses.append(response.status_code)
    return statuses


async def test_rate_limited_answers_keep_to_the_document(
    start_gateway: StartGateway, services: FakeServices, sim: TestServer
) -> None:
    services.scheduler.add_node("sim-1", SIM_MODEL, f"http://127.0.0.1:{sim.port}")
    gateway = await start_gateway(DEFAULT_KEY_RPM="2")
    _, key_id, api_key = await gateway.new_key()
    target = Target(gateway.url, api_key, "", key_id)

    statuses = await asyncio.to_thread(_validate_answers, target, "/v1/chat/completions", 3)

    assert statuses == [200, 200, 429]  # the 429's Retry-After and x-ratelimit-* checked too


async def test_nul_characters_found_by_the_fuzzer_are_refused_and_audited(
    gateway: Gateway,
) -> None:
    """Postgres text holds no NUL character: such input is a 400 or a 404, never a 500, and the
    call still gets its audit row."""
    status, body = await gateway.admin(
        "POST", "/admin/tenants", {"name": "a\x00b", "email": "a@b.io"}
    )
    assert status == 400 and body["error"]["param"] == "name"
    status, body = await gateway.admin(
        "POST",
        "/admin/nodes/launch",
        {"model": "m", "accelerators": "H100:1", "vllm_args": ["\x00"]},
    )
    assert status == 400 and body["error"]["param"] == "vllm_args.0"
    for method, path in [("GET", "/admin/tenants/%00"), ("DELETE", "/admin/keys/a%00b")]:
        status, body = await gateway.admin(method, path)
        assert status == 404, (method, path, body)

    status, audit = await gateway.admin("GET", "/admin/audit?limit=4")
    assert status == 200
    assert [(e["method"], e["path"], e["status"]) for e in reversed(audit["data"])] == [
        ("POST", "/admin/tenants", 400),
        ("POST", "/admin/nodes/launch", 400),
        ("GET", "/admin/tenants/%00", 404),
        ("DELETE", "/admin/keys/a%00b", 404),
    ]


def _validate_failures(target: Target) -> dict[str, int]:
    """``/readyz``, ``/v1/models`` and a chat completion with the scheduler unreachable,
    each answer checked against the document; the statuses."""
    document = requests.get(target.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    chat = schema["/v1/chat/completions"]["POST"]
    examples = chat.definition.raw["requestBody"]["content"]["application/json"]["examples"]
    cases = {
        "readyz": schema["/readyz"]["GET"].Case(),
        "models": schema["/v1/models"]["GET"].Case(),
        "chat": chat.Case(body=dict(examples["chat"]["value"])),
    }
    statuses = {}
    for name, case in cases.items():
        response = case.call_and_validate(
            base_url=target.url,
            headers=_credentials(case.operation, target),
            checks=CONFORMANCE,  # a 503 is what these answers should be
            timeout=10,
        )
        statuses[name] = response.status_code
    return statuses


async def test_answers_with_the_scheduler_down_keep_to_the_document(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    _, key_id, api_key = await gateway.new_key()
    down = await start_gateway(SCHEDULER_ADDR=f"127.0.0.1:{free_port()}")

    statuses = await asyncio.to_thread(_validate_failures, Target(down.url, api_key, "", key_id))

    assert statuses == {"readyz": 503, "models": 503, "chat": 503}
