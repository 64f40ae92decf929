"""Admin API: model deployments, kept true by the orchestrator (a deployment is the model's
scaling policy there): at least ``min_nodes`` and at most ``max_nodes`` nodes, scaled on the
queue per node and, with a ``target_latency_ms``, on the nodes' time to first token, launched
with ``accelerators`` (``auto``: chosen from the model's size) on one of ``clouds``, spot or
on-demand."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from aiohttp import web
from pydantic import Field, StrictBool, StrictInt, StringConstraints, model_validator

from cic.orchestrator.v1 import orchestrator_pb2
from cic_gateway.admin import Body, listing
from cic_gateway.admin_auth import audit_detail
from cic_gateway.errors import ApiError, bad_request, from_grpc_error
from cic_gateway.jsonio import json_response, read_json_object, validated
from cic_gateway.resources import SERVICES

MAX_MODEL_CHARS = 200
Nodes = Annotated[StrictInt, Field(ge=0, le=1000)]
Queue = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)]
LatencyMs = Annotated[float, Field(ge=0, le=600_000, allow_inf_nan=False)]  # 0: not used
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Clouds = Annotated[list[Short], Field(max_length=8)]
VllmArgs = Annotated[list[Annotated[str, StringConstraints(max_length=500)]], Field(max_length=64)]


class NewDeployment(Body):
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    min_nodes: Nodes = 1
    max_nodes: Nodes | None = None  # default: min_nodes (at least 1)
    target_queue_per_node: Queue = 8.0
    target_latency_ms: LatencyMs = 0.0
    accelerators: Short = "auto"
    clouds: Clouds = []
    use_spot: StrictBool = False
    vllm_args: VllmArgs = []


class DeploymentChange(Body):
    min_nodes: Nodes | None = None
    max_nodes: Nodes | None = None
    target_queue_per_node: Queue | None = None
    target_latency_ms: LatencyMs | None = None
    accelerators: Short | None = None
    clouds: Clouds | None = None
    use_spot: StrictBool | None = None
    vllm_args: VllmArgs | None = None

    @model_validator(mode="after")
    def _something(self) -> DeploymentChange:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


def deployment_json(policy: orchestrator_pb2.ScalingPolicy) -> dict[str, Any]:
    clouds = list(policy.clouds) or ([policy.cloud] if policy.cloud else [])
    return {
        "model": policy.model,
        "min_nodes": policy.min_nodes,
        "max_nodes": policy.max_nodes,
        "target_queue_per_node": policy.target_queue_per_node,
        "target_latency_ms": policy.target_latency_ms,
        "accelerators": policy.accelerators,
        "clouds": clouds,
        "use_spot": policy.use_spot,
        "vllm_args": list(policy.vllm_args),
    }


def _model(request: web.Request) -> str:
    model = request.match_info["model"]
    audit_detail(request)["model"] = model
    if not model.strip() or len(model) > MAX_MODEL_CHARS or "\x00" in model:
        raise bad_request(f"model: 1 to {MAX_MODEL_CHARS} characters", param="model")
    return model


async def _get(request: web.Request, model: str) -> orchestrator_pb2.ScalingPolicy | None:
    try:
        reply = await request.app[SERVICES].orchestrator.GetScalingPolicy(
            orchestrator_pb2.GetScalingPolicyRequest(model=model)
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise from_grpc_error(err, "orchestrator") from None
    return reply.policy


async def _set(request: web.Request, policy: orchestrator_pb2.ScalingPolicy) -> web.Response:
    try:
        reply = await request.app[SERVICES].orchestrator.SetScalingPolicy(
            orchestrator_pb2.SetScalingPolicyRequest(policy=policy)
        )
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "orchestrator") from None
    return json_response(
        deployment_json(reply.policy), status=201 if request.method == "POST" else 200
    )


def _not_found(model: str) -> ApiError:
    return ApiError(404, f"No deployment of model {model}.", code="not_found")


async def create_deployment(request: web.Request) -> web.Response:
    _, data = await read_json_object(request)
    body = validated(NewDeployment, data)
    audit_detail(request).update(model=body.model, min_nodes=body.min_nodes)
    if await _get(request, body.model) is not None:
        raise ApiError(409, f"Model {body.model} is deployed already.", code="conflict")
    max_nodes = body.max_nodes if body.max_nodes is not None else max(body.min_nodes, 1)
    policy = orchestrator_pb2.ScalingPolicy(
        model=body.model,
        min_nodes=body.min_nodes,
        max_nodes=max_nodes,
        target_queue_per_node=body.target_queue_per_node,
        target_latency_ms=body.target_latency_ms,
        accelerators=body.accelerators,
        clouds=body.clouds,
        use_spot=body.use_spot,
        vllm_args=body.vllm_args,
    )
    return await _set(request, policy)


async def list_deployments(request: web.Request) -> web.Response:
    try:
        reply = await request.app[SERVICES].orchestrator.ListScalingPolicies(
            orchestrator_pb2.ListScalingPoliciesRequest()
        )
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "orchestrator") from None
    return json_response(listing([deployment_json(p) for p in reply.policies]))


async def get_deployment(request: web.Request) -> web.Response:
    model = _model(request)
    policy = await _get(request, model)
    if policy is None:
        raise _not_found(model)
    return json_response(deployment_json(policy))


async def change_deployment(request: web.Request) -> web.Response:
    """Scales a deployment (min/max nodes) or changes how new nodes are launched."""
    model = _model(request)
    _, data = await read_json_object(request)
    change = validated(DeploymentChange, data)
    audit_detail(request).update(change.model_dump(exclude_unset=True))
    policy = await _get(request, model)
    if policy is None:
        raise _not_found(model)
    # A field sent as null is left as it is (nothing here can be unset).
    for name, value in change.model_dump(exclude_unset=True, exclude_none=True).items():
        if name in ("clouds", "vllm_args"):
            del getattr(policy, name)[:]
            getattr(policy, name).extend(value)
            if name == "clouds":
                policy.cloud = ""
        else:
            setattr(policy, name, value)
    return await _set(request, policy)


async def delete_deployment(request: web.Request) -> web.Response:
    """Stops keeping the deployment; its launched nodes drain, then terminate."""
    model = _model(request)
    try:
        await request.app[SERVICES].orchestrator.DeleteScalingPolicy(
            orchestrator_pb2.DeleteScalingPolicyRequest(model=model, terminate_nodes=True)
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise _not_found(model) from None
        raise from_grpc_error(err, "orchestrator") from None
    return json_response({"model": model, "deleted": True}, status=202)
