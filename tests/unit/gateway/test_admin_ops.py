"""Admin calls answered by billing, the scheduler and the orchestrator (fakes on a real port)."""

from datetime import UTC, datetime

from cic.billing.v1 import billing_pb2
from cic.orchestrator.v1 import orchestrator_pb2
from tests.unit.gateway.conftest import MODEL, Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices


async def test_usage_converts_micro_dollars_exactly(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    gateway.services.billing.usage_reply = billing_pb2.GetUsageResponse(
        tenant_id=tenant_id,
        requests=3,
        prompt_tokens=30,
        completion_tokens=44,
        cost_micro_usd=1_234_567,
        by_model=[
            billing_pb2.ModelUsage(
                model="a",
                requests=2,
                prompt_tokens=20,
                completion_tokens=40,
                cost_micro_usd=1_234_560,
            ),
            billing_pb2.ModelUsage(
                model="b", requests=1, prompt_tokens=10, completion_tokens=4, cost_micro_usd=7
            ),
        ],
    )
    status, usage = await gateway.admin(
        "GET",
        f"/admin/tenants/{tenant_id}/usage?start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00",
    )
    assert status == 200
    assert usage == {
        "tenant_id": tenant_id,
        "requests": 3,
        "prompt_tokens": 30,
        "completion_tokens": 44,
        "cost_usd": 1.234567,
        "cost_micro_usd": 1_234_567,
        "by_model": [
            {
                "model": "a",
                "requests": 2,
                "prompt_tokens": 20,
                "completion_tokens": 40,
                "cost_usd": 1.23456,
                "cost_micro_usd": 1_234_560,
            },
            {
                "model": "b",
                "requests": 1,
                "prompt_tokens": 10,
                "completion_tokens": 4,
                "cost_usd": 0.000007,
                "cost_micro_usd": 7,
            },
        ],
    }
    (query,) = gateway.services.billing.usage_queries
    assert query.tenant_id == tenant_id
    assert query.start.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    assert query.end.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, tzinfo=UTC)

    status, _ = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/usage")
    assert status == 200
    assert not gateway.services.billing.usage_queries[-1].HasField("start")


async def test_usage_validates_times_and_the_tenant(gateway: Gateway) -> None:
    tenant_id, _, _ = await gateway.new_key()
    for query in ("start=yesterday", "end=2026-13-01", "start=2026-02-01&end=2026-01-01"):
        status, answer = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/usage?{query}")
        assert status == 400, query
        assert answer["error"]["param"] in ("start", "end")
    status, _ = await gateway.admin("GET", "/admin/tenants/ten_nope/usage")
    assert status == 404
    assert gateway.services.billing.usage_queries == []


async def test_usage_with_billing_down_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(BILLING_ADDR="127.0.0.1:9")
    tenant_id, _, _ = await gateway.new_key()
    status, answer = await gateway.admin("GET", f"/admin/tenants/{tenant_id}/usage")
    assert status == 503 and answer["error"]["code"] == "service_unavailable"


async def test_nodes_come_from_the_scheduler(gateway: Gateway) -> None:
    gateway.services.scheduler.add_node("node-b", "cold", "http://10.0.0.2:8000", ready=False)
    status, nodes = await gateway.admin("GET", "/admin/nodes")
    assert status == 200
    assert nodes["data"] == [
        {
            "id": "node-a",
            "model": MODEL,
            "endpoint": gateway.node.endpoint,
            "state": "ready",
            "in_flight": 0,
            "healthy": True,
            "health": "healthy",  # the orchestrator's three-signal judgement
        },
        {
            "id": "node-b",
            "model": "cold",
            "endpoint": "http://10.0.0.2:8000",
            "state": "launching",
            "in_flight": 0,
            "healthy": False,
            "health": None,  # not judged by the orchestrator
        },
    ]


async def test_node_admin_calls_reach_the_orchestrator(gateway: Gateway) -> None:
    orchestrator = gateway.services.orchestrator
    status, node = await gateway.admin(
        "POST", "/admin/nodes", {"endpoint": "http://10.0.0.5:8000/", "model": "m"}
    )
    assert status == 201
    assert (node["endpoint"], node["model"], node["state"]) == (
        "http://10.0.0.5:8000",
        "m",
        "launching",
    )
    name, request = orchestrator.calls[-1]
    assert name == "RegisterNode"
    assert isinstance(request, orchestrator_pb2.RegisterNodeRequest)
    assert (request.endpoint, request.model, request.region) == ("http://10.0.0.5:8000", "m", "")

    status, _ = await gateway.admin(
        "POST",
        "/admin/nodes",
        {"endpoint": "http://10.0.0.6:8000", "model": "m", "region": "eu-west"},
    )
    assert status == 201 and orchestrator.calls[-1][1].region == "eu-west"

    status, launched = await gateway.admin(
        "POST",
        "/admin/nodes/launch",
        {
            "model": "m",
            "accelerators": "H100:1",
            "cloud": "aws",
            "vllm_args": ["--max-model-len=8192"],
        },
    )
    assert status == 202
    assert launched["vllm_args"] == ["--max-model-len=8192"] and launched["cloud"] == "aws"
    assert orchestrator.calls[-1][0] == "LaunchNode"

    status, terminated = await gateway.admin("DELETE", f"/admin/nodes/{launched['id']}")
    assert status == 202 and terminated["state"] == "draining"
    terminate = orchestrator.calls[-1][1]
    assert isinstance(terminate, orchestrator_pb2.TerminateNodeRequest)
    assert terminate.node_id == launched["id"]


async def test_node_admin_errors_are_mapped(gateway: Gateway) -> None:
    cases = [
        ("POST", "/admin/nodes", {"endpoint": "ftp://x", "model": "m"}, 400),
        ("POST", "/admin/nodes", {"endpoint": "http://x:1"}, 400),
        ("POST", "/admin/nodes", {"endpoint": "http://x", "model": "m", "region": "eu west"}, 400),
        ("POST", "/admin/nodes/launch", {"model": "m"}, 400),
        (
            "POST",
            "/admin/nodes/launch",
            {"model": "m", "accelerators": "A:1", "vllm_args": ["--evil"]},
            400,
        ),
        ("DELETE", "/admin/nodes/unknown", None, 404),
        ("DELETE", "/admin/nodes/node-terminated", None, 409),
    ]
    for method, path, body, expected in cases:
        status, answer = await gateway.admin(method, path, body)
        assert status == expected, (method, path, body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
    status, answer = await gateway.admin(
        "POST",
        "/admin/nodes/launch",
        {"model": "m", "accelerators": "A:1", "vllm_args": ["--evil"]},
    )
    assert answer["error"]["message"] == "vllm arg --evil is not allowed"


async def test_services_down_answer_503(
    start_gateway: StartGateway, services: FakeServices
) -> None:
    gateway = await start_gateway(ORCHESTRATOR_ADDR="127.0.0.1:9", SCHEDULER_ADDR="127.0.0.1:9")
    status, answer = await gateway.admin("GET", "/admin/nodes")
    assert status == 503 and "scheduler" in answer["error"]["message"]
    status, answer = await gateway.admin("DELETE", "/admin/nodes/node-1")
    assert status == 503 and "orchestrator" in answer["error"]["message"]
    assert services.orchestrator.calls == []
