"""Deployment admin routes and the node agent's API through the real gateway app, with the
orchestrator faked over real gRPC (the orchestrator's side has its own tests)."""

from __future__ import annotations

import orjson

from cic.orchestrator.v1 import orchestrator_pb2
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.fakes import FAKE_NODE_TOKEN

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def test_deployments_are_created_scaled_listed_and_deleted(gateway: Gateway) -> None:
    status, created = await gateway.admin(
        "POST", "/admin/deployments", {"model": MODEL, "clouds": ["aws", "gcp"], "use_spot": True}
    )
    assert status == 201, created
    assert created == {
        "model": MODEL,
        "min_nodes": 1,
        "max_nodes": 1,
        "target_queue_per_node": 8.0,
        "target_latency_ms": 0.0,
        "accelerators": "auto",
        "clouds": ["aws", "gcp"],
        "use_spot": True,
        "vllm_args": [],
    }
    status, again = await gateway.admin("POST", "/admin/deployments", {"model": MODEL})
    assert (status, again["error"]["code"]) == (409, "conflict")

    status, scaled = await gateway.admin(
        "PATCH", f"/admin/deployments/{MODEL}", {"min_nodes": 2, "max_nodes": 6}
    )
    assert status == 200 and (scaled["min_nodes"], scaled["max_nodes"]) == (2, 6)
    assert scaled["clouds"] == ["aws", "gcp"]
    status, refused = await gateway.admin("PATCH", f"/admin/deployments/{MODEL}", {"min_nodes": 9})
    assert status == 400 and "max_nodes must be between" in refused["error"]["message"]
    status, empty = await gateway.admin("PATCH", f"/admin/deployments/{MODEL}", {})
    assert status == 400 and "at least one field" in empty["error"]["message"]
    # null leaves a field as it is (the fuzzer's find: it was a 500)
    nulls = {"use_spot": None, "accelerators": None, "max_nodes": 7}
    status, kept = await gateway.admin("PATCH", f"/admin/deployments/{MODEL}", nulls)
    assert status == 200, kept
    assert (kept["use_spot"], kept["accelerators"], kept["max_nodes"]) == (True, "auto", 7)
    status, scaled = await gateway.admin("PATCH", f"/admin/deployments/{MODEL}", {"max_nodes": 6})
    # A latency target (time to first token) as a second scale-up signal; 0 turns it off.
    status, timed = await gateway.admin(
        "PATCH", f"/admin/deployments/{MODEL}", {"target_latency_ms": 250}
    )
    assert (status, timed["target_latency_ms"], timed["max_nodes"]) == (200, 250.0, 6)
    for bad in (-1, 600_001, "fast"):
        status, refused = await gateway.admin(
            "PATCH", f"/admin/deployments/{MODEL}", {"target_latency_ms": bad}
        )
        assert (status, refused["error"]["param"]) == (400, "target_latency_ms"), refused
    status, scaled = await gateway.admin(
        "PATCH", f"/admin/deployments/{MODEL}", {"target_latency_ms": 0}
    )
    assert (status, scaled["target_latency_ms"]) == (200, 0.0)

    status, listed = await gateway.admin("GET", "/admin/deployments")
    assert status == 200 and [d["model"] for d in listed["data"]] == [MODEL]
    status, got = await gateway.admin("GET", f"/admin/deployments/{MODEL}")
    assert status == 200 and got == scaled

    status, deleted = await gateway.admin("DELETE", f"/admin/deployments/{MODEL}")
    assert (status, deleted) == (202, {"model": MODEL, "deleted": True})
    (_, request), *_ = [
        c for c in gateway.services.orchestrator.calls if c[0] == "DeleteScalingPolicy"
    ]
    assert request.terminate_nodes  # its nodes drain and terminate
    for method in ("GET", "DELETE"):
        status, missing = await gateway.admin(method, f"/admin/deployments/{MODEL}")
        assert (status, missing["error"]["code"]) == (404, "not_found")


async def test_the_node_api_takes_the_node_token_and_nothing_else(gateway: Gateway) -> None:
    url = gateway.url + "/internal/nodes/node-0123456789ab/preemption"
    body = {"cloud": "aws", "notice": "terminate", "not_after": "2026-01-01T00:02:00Z"}
    for headers in (
        {},
        {"Authorization": "Bearer sk-cic-not-a-node-token"},
        gateway.admin_headers(),
        {"Authorization": "Bearer cic-node-" + "b" * 43},  # well-formed, not the node's
    ):
        async with gateway.session.post(url, json=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 401, headers
            assert answer["error"]["code"] == "invalid_node_token"
    good = {"Authorization": f"Bearer {FAKE_NODE_TOKEN}"}
    async with gateway.session.post(url, json=body, headers=good) as resp:
        assert (resp.status, await resp.json()) == (202, {"state": "ready"})
    (_, forwarded), *_ = [
        c for c in gateway.services.orchestrator.calls if c[0] == "AgentPreempted"
    ]
    assert isinstance(forwarded, orchestrator_pb2.AgentPreemptedRequest)
    assert (forwarded.node_id, forwarded.cloud, forwarded.notice) == (
        "node-0123456789ab",
        "aws",
        "terminate",
    )
    assert forwarded.not_after.ToJsonString() == "2026-01-01T00:02:00Z"
    async with gateway.session.post(url, json={"cloud": "ibm"}, headers=good) as resp:
        assert resp.status == 400


async def test_a_nodes_log_is_streamed_as_ndjson(gateway: Gateway) -> None:
    url = gateway.url + "/admin/nodes/node-0123456789ab/logs?follow=true"
    async with gateway.session.get(url, headers=gateway.admin_headers()) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-ndjson"
        lines = [orjson.loads(line) async for line in resp.content]
    assert lines == [
        {"at": "2026-01-01T00:00:00Z", "text": "node node-0123456789ab: launching"},
        {"at": "2026-01-01T00:00:00Z", "text": "node node-0123456789ab: ready"},
    ]
    status, missing = await gateway.admin("GET", "/admin/nodes/nope/logs")
    assert (status, missing["error"]["code"]) == (404, "not_found")
    status, bad = await gateway.admin("GET", "/admin/nodes/node-1/logs?follow=yes")
    assert status == 400 and bad["error"]["param"] == "follow"
    async with gateway.session.get(url) as resp:
        assert resp.status == 401
