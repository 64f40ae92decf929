"""The node API: what ``cic-node-agent`` calls on the gateway's public address from a GPU node.

``POST /internal/nodes/{node_id}/register``, ``/heartbeat`` and ``/preemption``, each with
``Authorization: Bearer <node token>`` — the per-node token the orchestrator issued when it
launched the node (never the admin token, never an API key). The gateway checks the token's
form and hands it to the orchestrator, which keeps only its SHA-256 digest and compares in
constant time; a token that is not the node's gets 401.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import StringConstraints

from cic.orchestrator.v1 import orchestrator_pb2
from cic_gateway.admin import Body
from cic_gateway.errors import ApiError, bad_request, from_grpc_error
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.resources import SERVICES

_NODE_ID = re.compile(r"^node-[0-9a-f]{12}$")
_NODE_TOKEN = re.compile(r"^cic-node-[A-Za-z0-9_-]{43}$")


class AgentRegistration(Body):
    agent_version: Annotated[str, StringConstraints(max_length=40)] = ""


class AgentHeartbeat(Body):
    vllm_healthy: bool = True


class PreemptionNotice(Body):
    cloud: Literal["aws", "gcp", "azure"]
    notice: Annotated[str, StringConstraints(max_length=200)] = ""
    not_after: datetime | None = None


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_node_token")


def _node_and_token(request: web.Request) -> tuple[str, str]:
    node_id = request.match_info["node_id"]
    if not _NODE_ID.fullmatch(node_id):
        raise bad_request("node_id must look like node-0123456789ab", param="node_id")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthenticated("A node token is required (Authorization: Bearer <node token>).")
    if not _NODE_TOKEN.fullmatch(token.strip()):
        raise _unauthenticated("The node token is not valid for this node.")
    return node_id, token.strip()


def _state(reply: orchestrator_pb2.AgentResponse) -> dict[str, Any]:
    name = orchestrator_pb2.NodeState.Name(reply.state).removeprefix("NODE_STATE_").lower()
    return {"state": name}


async def _call(request: web.Request, method: str, message: Any, status: int = 200) -> web.Response:
    try:
        reply = await getattr(request.app[SERVICES].orchestrator, method)(message)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise _unauthenticated("The node token is not valid for this node.") from None
        raise from_grpc_error(err, "orchestrator") from None
    return json_response(_state(reply), status=status)


async def register(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)  # within MAX_BODY_BYTES (413 beyond)
    node_id, token = _node_and_token(request)
    body = validated(AgentRegistration, data)
    call = orchestrator_pb2.AgentRegisterRequest(
        node_id=node_id, token=token, agent_version=body.agent_version
    )
    return await _call(request, "AgentRegister", call)


async def heartbeat(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)  # within MAX_BODY_BYTES (413 beyond)
    node_id, token = _node_and_token(request)
    body = validated(AgentHeartbeat, data)
    call = orchestrator_pb2.AgentHeartbeatRequest(
        node_id=node_id, token=token, vllm_healthy=body.vllm_healthy
    )
    return await _call(request, "AgentHeartbeat", call)


async def preemption(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)  # within MAX_BODY_BYTES (413 beyond)
    node_id, token = _node_and_token(request)
    body = validated(PreemptionNotice, data)
    call = orchestrator_pb2.AgentPreemptedRequest(
        node_id=node_id, token=token, cloud=body.cloud, notice=body.notice
    )
    if body.not_after is not None:
        when = body.not_after if body.not_after.tzinfo else body.not_after.replace(tzinfo=UTC)
        stamp = Timestamp()
        stamp.FromDatetime(when)
        call.not_after.CopyFrom(stamp)
    return await _call(request, "AgentPreempted", call, status=202)
