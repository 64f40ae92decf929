"""Admin API calls answered by the services behind the gateway (usage from billing, nodes from
the scheduler and the orchestrator) and the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import grpc
import orjson
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field, StringConstraints, field_validator

from cic.billing.v1 import billing_pb2
from cic.orchestrator.v1 import orchestrator_pb2
from cic.scheduler.v1 import scheduler_pb2
from cic_gateway import store
from cic_gateway.admin import Body, listing, tenant_or_404
from cic_gateway.admin_auth import audit_detail
from cic_gateway.admin_environments import Region
from cic_gateway.errors import bad_request, from_grpc_error
from cic_gateway.jsonio import json_response, query_limit, read_json_object, validated
from cic_gateway.resources import DB, SERVICES, SETTINGS

_DEFAULT_AUDIT_LIMIT = 100
_MAX_AUDIT_LIMIT = 1000

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class NewNode(Body):
    endpoint: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
    model: Text
    # The node's `region` label: environments preferring it are served there first.
    region: Region | None = None

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")


class LaunchNode(Body):
    model: Text
    accelerators: Text
    cloud: Text | None = None
    vllm_args: Annotated[
        list[Annotated[str, StringConstraints(max_length=500)]], Field(max_length=100)
    ] = []


def cost_usd(micro_usd: int) -> float:
    """Integer micro-dollars as dollars: exact to the last of its six decimals."""
    return round(micro_usd / 1_000_000, 6)


def _when(request: web.Request, name: str) -> Timestamp | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request(f"{name}: not an ISO-8601 time", param=name) from None
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def _usage_json(tenant_id: str, reply: billing_pb2.GetUsageResponse) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "requests": reply.requests,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "cost_usd": cost_usd(reply.cost_micro_usd),
        "cost_micro_usd": reply.cost_micro_usd,
        "by_model": [
            {
                "model": m.model,
                "requests": m.requests,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "cost_usd": cost_usd(m.cost_micro_usd),
                "cost_micro_usd": m.cost_micro_usd,
            }
            for m in reply.by_model
        ],
    }


async def tenant_usage(request: web.Request) -> web.Response:
    tenant = await tenant_or_404(request)
    start, end = _when(request, "start"), _when(request, "end")
    if start is not None and end is not None and start.ToDatetime() >= end.ToDatetime():
        raise bad_request("start must be before end", param="start")
    query = billing_pb2.GetUsageRequest(tenant_id=tenant["id"], start=start, end=end)
    try:
        reply = await request.app[SERVICES].billing.GetUsage(query)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    return json_response(_usage_json(tenant["id"], reply))


def _state(value: int) -> str:
    return scheduler_pb2.NodeState.Name(value).removeprefix("NODE_STATE_").lower()  # type: ignore[arg-type]


def _managed_node_json(node: orchestrator_pb2.ManagedNode) -> dict[str, Any]:
    return {
        "id": node.id,
        "model": node.model,
        "endpoint": node.endpoint,
        "state": orchestrator_pb2.NodeState.Name(node.state).removeprefix("NODE_STATE_").lower(),
        "provider": node.provider,
        "accelerators": node.accelerators,
        "cloud": node.cloud,
        "vllm_args": list(node.vllm_args),
        "failure_reason": node.failure_reason,
        "health": _health(node.health),
        "use_spot": node.use_spot,
        "replaces": node.replaces,
    }


async def _health_by_node(request: web.Request) -> dict[str, str | None]:
    """Each managed node's health as the orchestrator judges it; empty when it cannot say."""
    try:
        reply = await request.app[SERVICES].orchestrator.ListNodes(
            orchestrator_pb2.ListNodesRequest()
        )
    except grpc.aio.AioRpcError:
        return {}
    return {node.id: _health(node.health) for node in reply.nodes}


def _health(value: int) -> str | None:
    if value == orchestrator_pb2.NODE_HEALTH_UNSPECIFIED:
        return None
    return orchestrator_pb2.NodeHealth.Name(value).removeprefix("NODE_HEALTH_").lower()  # type: ignore[arg-type]


async def list_nodes(request: web.Request) -> web.Response:
    health = asyncio.create_task(_health_by_node(request))
    try:
        nodes = await request.app[SERVICES].scheduler.list_nodes()
    except grpc.aio.AioRpcError as err:
        health.cancel()
        raise from_grpc_error(err, "scheduler") from None
    by_node = await health
    return json_response(
        listing(
            [
                {
                    "id": n.id,
                    "model": n.model,
                    "endpoint": n.endpoint,
                    "state": _state(n.state),
                    "in_flight": n.in_flight,
                    "healthy": n.healthy,
                    "health": by_node.get(n.id),
                }
                for n in nodes
            ]
        )
    )


async def register_node(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(NewNode, data)
    audit_detail(request).update(endpoint=body.endpoint, model=body.model, region=body.region)
    call = orchestrator_pb2.RegisterNodeRequest(
        endpoint=body.endpoint, model=body.model, region=body.region or ""
    )
    try:
        reply = await request.app[SERVICES].orchestrator.RegisterNode(call)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "orchestrator") from None
    audit_detail(request)["node_id"] = reply.node.id
    return json_response(_managed_node_json(reply.node), status=201)


async def launch_node(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(LaunchNode, data)
    audit_detail(request).update(model=body.model, accelerators=body.accelerators, cloud=body.cloud)
    call = orchestrator_pb2.LaunchNodeRequest(
        model=body.model,
        accelerators=body.accelerators,
        cloud=body.cloud or "",
        vllm_args=body.vllm_args,
    )
    try:
        reply = await request.app[SERVICES].orchestrator.LaunchNode(call)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "orchestrator") from None
    audit_detail(request)["node_id"] = reply.node.id
    return json_response(_managed_node_json(reply.node), status=202)


async def terminate_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    audit_detail(request)["node_id"] = node_id
    try:
        reply = await request.app[SERVICES].orchestrator.TerminateNode(
            orchestrator_pb2.TerminateNodeRequest(node_id=node_id)
        )
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "orchestrator") from None
    return json_response(_managed_node_json(reply.node), status=202)


async def node_logs(request: web.Request) -> web.StreamResponse:
    """The node's log as NDJSON lines ``{"at", "text"}``; ``follow=true`` keeps the response
    open and sends each new line until the node is terminated or failed."""
    node_id = request.match_info["node_id"]
    audit_detail(request)["node_id"] = node_id
    follow = request.query.get("follow", "false")
    if follow not in ("true", "false"):
        raise bad_request("follow: true or false", param="follow")
    call = request.app[SERVICES].orchestrator.StreamNodeLogs(
        orchestrator_pb2.StreamNodeLogsRequest(node_id=node_id, follow=follow == "true"),
        timeout=None if follow == "true" else request.app[SETTINGS].grpc_timeout_s,
    )
    response: web.StreamResponse | None = None
    try:
        async for line in call:
            if response is None:
                response = await _start_ndjson(request)
            entry = {"at": line.at.ToJsonString(), "text": line.text}
            await response.write(orjson.dumps(entry) + b"\n")
        if response is None:  # no line yet: the node is known (else the call failed)
            response = await _start_ndjson(request)
    except grpc.aio.AioRpcError as err:
        if response is None:
            raise from_grpc_error(err, "orchestrator") from None
        return response  # cut off midway: the client sees the stream end
    finally:
        call.cancel()
    await response.write_eof()
    return response


async def _start_ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


async def list_audit(request: web.Request) -> web.Response:
    limit = query_limit(request, _DEFAULT_AUDIT_LIMIT, _MAX_AUDIT_LIMIT)
    rows = await store.list_audit(request.app[DB], limit)
    return json_response(listing([{**r, "at": store.iso(r["at"])} for r in rows]))
