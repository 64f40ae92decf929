"""``cic.orchestrator.v1.OrchestratorService`` over gRPC: checks, answers, and maps refusals to
status codes; the work itself is in :mod:`cic_orchestrator.lifecycle`."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import NoReturn, TypeVar

import grpc

from cic.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from cic_orchestrator.agent_desk import AgentDesk
from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.node_logs import NodeLogs
from cic_orchestrator.nodes import (
    LIVE_STATES,
    AgentUnauthenticated,
    EndpointInUse,
    InvalidNodeRequest,
    NodeConflict,
    NodeError,
    NodeHealth,
    NodeNotFound,
    NodeRecord,
    NodeState,
    NoProviderForCloud,
)
from cic_orchestrator.policies import PolicyNotFound, PolicyStore, ScalingPolicy, check_policy

T = TypeVar("T")

_CODES: dict[type[NodeError], grpc.StatusCode] = {
    InvalidNodeRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NodeNotFound: grpc.StatusCode.NOT_FOUND,
    NodeConflict: grpc.StatusCode.FAILED_PRECONDITION,
    NoProviderForCloud: grpc.StatusCode.FAILED_PRECONDITION,
    EndpointInUse: grpc.StatusCode.ALREADY_EXISTS,
    PolicyNotFound: grpc.StatusCode.NOT_FOUND,
    AgentUnauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
STANDBY = "this orchestrator replica is on standby; another one is active"
_PROTO_STATES = {
    state: orchestrator_pb2.NodeState.Value(f"NODE_STATE_{state.name}") for state in NodeState
}
_STATES_BY_PROTO = {value: state for state, value in _PROTO_STATES.items()}
_PROTO_HEALTH = {
    health: orchestrator_pb2.NodeHealth.Value(
        f"NODE_HEALTH_{health.name}" if health.value else "NODE_HEALTH_UNSPECIFIED"
    )
    for health in NodeHealth
}


def to_proto(record: NodeRecord) -> orchestrator_pb2.ManagedNode:
    node = orchestrator_pb2.ManagedNode(
        id=record.id,
        model=record.model,
        provider=record.provider,
        accelerators=record.accelerators,
        cloud=record.cloud,
        vllm_args=list(record.vllm_args),
        state=_PROTO_STATES[record.state],
        endpoint=record.endpoint,
        failure_reason=record.failure_reason,
        use_spot=record.use_spot,
        health=_PROTO_HEALTH[record.health],
        replaces=record.replaces,
        preemption=record.preemption,
    )
    if record.agent_seen_at is not None:
        node.agent_seen_at.FromDatetime(record.agent_seen_at)
    node.created_at.FromDatetime(record.created_at)
    node.updated_at.FromDatetime(record.updated_at)
    return node


def policy_to_proto(policy: ScalingPolicy) -> orchestrator_pb2.ScalingPolicy:
    return orchestrator_pb2.ScalingPolicy(
        model=policy.model,
        min_nodes=policy.min_nodes,
        max_nodes=policy.max_nodes,
        target_queue_per_node=policy.target_queue_per_node,
        accelerators=policy.accelerators,
        cloud=policy.cloud,
        use_spot=policy.use_spot,
        vllm_args=list(policy.vllm_args),
        clouds=list(policy.clouds),
        target_latency_ms=policy.target_latency_ms,
    )


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Every call is refused with UNAVAILABLE while ``active()`` is false (a standby)."""

    def __init__(
        self,
        lifecycle: NodeLifecycle,
        policies: PolicyStore,
        agents: AgentDesk,
        logs: NodeLogs,
        active: Callable[[], bool],
    ) -> None:
        self._logs = logs
        self._lifecycle = lifecycle
        self._agents = agents
        self._policies = policies
        self._active = active

    async def _serving(self, context: grpc.aio.ServicerContext) -> None:
        if not self._active():
            await context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY)

    async def LaunchNode(
        self, request: orchestrator_pb2.LaunchNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.LaunchNodeResponse:
        await self._serving(context)
        record = await _answer(
            context,
            self._lifecycle.launch(
                request.model,
                request.accelerators,
                request.cloud,
                list(request.vllm_args),
                request.use_spot,
            ),
        )
        return orchestrator_pb2.LaunchNodeResponse(node=to_proto(record))

    async def RegisterNode(
        self, request: orchestrator_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.RegisterNodeResponse:
        await self._serving(context)
        record = await _answer(
            context, self._lifecycle.adopt(request.endpoint, request.model, request.region)
        )
        return orchestrator_pb2.RegisterNodeResponse(node=to_proto(record))

    async def TerminateNode(
        self, request: orchestrator_pb2.TerminateNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.TerminateNodeResponse:
        await self._serving(context)
        record = await _answer(context, self._lifecycle.terminate(request.node_id))
        return orchestrator_pb2.TerminateNodeResponse(node=to_proto(record))

    async def GetNode(
        self, request: orchestrator_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetNodeResponse:
        await self._serving(context)
        record = await _answer(context, self._lifecycle.get(request.node_id))
        return orchestrator_pb2.GetNodeResponse(node=to_proto(record))

    async def ListNodes(
        self, request: orchestrator_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ListNodesResponse:
        await self._serving(context)
        unknown = [s for s in request.states if s not in _STATES_BY_PROTO]
        if unknown:
            await _abort(context, InvalidNodeRequest(f"states holds an unknown state {unknown[0]}"))
        states = [_STATES_BY_PROTO[s] for s in request.states]
        records = await self._lifecycle.list(states)
        return orchestrator_pb2.ListNodesResponse(nodes=[to_proto(r) for r in records])

    async def SetScalingPolicy(
        self, request: orchestrator_pb2.SetScalingPolicyRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.SetScalingPolicyResponse:
        await self._serving(context)
        stored = await _answer(context, self._set_policy(request.policy))
        return orchestrator_pb2.SetScalingPolicyResponse(policy=policy_to_proto(stored))

    async def _set_policy(self, given: orchestrator_pb2.ScalingPolicy) -> ScalingPolicy:
        if not math.isfinite(given.target_queue_per_node):
            raise InvalidNodeRequest("target_queue_per_node must be a finite number")
        if not math.isfinite(given.target_latency_ms):
            raise InvalidNodeRequest("target_latency_ms must be a finite number")
        policy = check_policy(
            ScalingPolicy(
                model=given.model,
                min_nodes=given.min_nodes,
                max_nodes=given.max_nodes,
                target_queue_per_node=given.target_queue_per_node,
                accelerators=given.accelerators,
                cloud=given.cloud,
                use_spot=given.use_spot,
                vllm_args=tuple(given.vllm_args),
                clouds=tuple(given.clouds),
                target_latency_ms=given.target_latency_ms,
            )
        )
        accelerators, _ = policy.launch_resources()  # auto: refused here if it cannot choose
        args = await self._lifecycle.check_launch(
            policy.model, accelerators, policy.launch_cloud, policy.vllm_args, policy.use_spot
        )
        return await self._policies.put(
            ScalingPolicy(**{**policy.__dict__, "vllm_args": tuple(args)})
        )

    async def GetScalingPolicy(
        self, request: orchestrator_pb2.GetScalingPolicyRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetScalingPolicyResponse:
        await self._serving(context)
        policy = await _answer(context, self._policies.get(request.model))
        return orchestrator_pb2.GetScalingPolicyResponse(policy=policy_to_proto(policy))

    async def ListScalingPolicies(
        self,
        request: orchestrator_pb2.ListScalingPoliciesRequest,
        context: grpc.aio.ServicerContext,
    ) -> orchestrator_pb2.ListScalingPoliciesResponse:
        await self._serving(context)
        policies = await self._policies.list()
        return orchestrator_pb2.ListScalingPoliciesResponse(
            policies=[policy_to_proto(p) for p in policies]
        )

    async def DeleteScalingPolicy(
        self,
        request: orchestrator_pb2.DeleteScalingPolicyRequest,
        context: grpc.aio.ServicerContext,
    ) -> orchestrator_pb2.DeleteScalingPolicyResponse:
        await self._serving(context)
        await _answer(context, self._policies.delete(request.model))
        if request.terminate_nodes:
            await self._lifecycle.terminate_model(request.model)
        return orchestrator_pb2.DeleteScalingPolicyResponse()

    async def AgentRegister(
        self, request: orchestrator_pb2.AgentRegisterRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.AgentResponse:
        await self._serving(context)
        state = await _answer(
            context, self._agents.register(request.node_id, request.token, request.agent_version)
        )
        return orchestrator_pb2.AgentResponse(state=_PROTO_STATES[state])

    async def AgentHeartbeat(
        self, request: orchestrator_pb2.AgentHeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.AgentResponse:
        await self._serving(context)
        state = await _answer(
            context, self._agents.heartbeat(request.node_id, request.token, request.vllm_healthy)
        )
        return orchestrator_pb2.AgentResponse(state=_PROTO_STATES[state])

    async def AgentPreempted(
        self, request: orchestrator_pb2.AgentPreemptedRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.AgentResponse:
        await self._serving(context)
        not_after = request.not_after.ToDatetime(UTC) if request.HasField("not_after") else None
        state = await _answer(
            context,
            self._agents.preempted(
                request.node_id, request.token, request.cloud, request.notice, not_after
            ),
        )
        return orchestrator_pb2.AgentResponse(state=_PROTO_STATES[state])

    async def StreamNodeLogs(
        self, request: orchestrator_pb2.StreamNodeLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.NodeLogLine]:
        await self._serving(context)
        record = await _answer(context, self._lifecycle.get(request.node_id))
        async for line in self._logs.stream(record.id, request.follow, self._still_live(record.id)):
            reply = orchestrator_pb2.NodeLogLine(text=line.text)
            reply.at.FromDatetime(line.at)
            yield reply

    async def _still_live(self, node_id: str) -> AsyncIterator[bool]:
        """Whether the node is live, asked of the store at most once a second."""
        live, asked = True, -math.inf
        while True:
            if time.monotonic() - asked >= 1.0:
                live = (await self._lifecycle.get(node_id)).state in LIVE_STATES
                asked = time.monotonic()
            yield live


async def _answer(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    try:
        return await work
    except NodeError as err:
        await _abort(context, err)


async def _abort(context: grpc.aio.ServicerContext, err: NodeError) -> NoReturn:
    await context.abort(_CODES.get(type(err), grpc.StatusCode.FAILED_PRECONDITION), str(err))
    raise AssertionError("abort returned")
