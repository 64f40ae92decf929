"""``cic.orchestrator.v1.OrchestratorService`` over gRPC: checks, answers, and maps refusals to
status codes; the work itself is in :mod:`cic_orchestrator.lifecycle`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import NoReturn, TypeVar

import grpc

from cic.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.nodes import (
    EndpointInUse,
    InvalidNodeRequest,
    NodeConflict,
    NodeError,
    NodeNotFound,
    NodeRecord,
    NodeState,
    NoProviderForCloud,
)

T = TypeVar("T")

_CODES: dict[type[NodeError], grpc.StatusCode] = {
    InvalidNodeRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NodeNotFound: grpc.StatusCode.NOT_FOUND,
    NodeConflict: grpc.StatusCode.FAILED_PRECONDITION,
    NoProviderForCloud: grpc.StatusCode.FAILED_PRECONDITION,
    EndpointInUse: grpc.StatusCode.ALREADY_EXISTS,
}
_PROTO_STATES = {
    state: orchestrator_pb2.NodeState.Value(f"NODE_STATE_{state.name}") for state in NodeState
}
_STATES_BY_PROTO = {value: state for state, value in _PROTO_STATES.items()}


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
    )
    node.created_at.FromDatetime(record.created_at)
    node.updated_at.FromDatetime(record.updated_at)
    return node


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, lifecycle: NodeLifecycle) -> None:
        self._lifecycle = lifecycle

    async def LaunchNode(
        self, request: orchestrator_pb2.LaunchNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.LaunchNodeResponse:
        record = await _answer(
            context,
            self._lifecycle.launch(
                request.model, request.accelerators, request.cloud, list(request.vllm_args)
            ),
        )
        return orchestrator_pb2.LaunchNodeResponse(node=to_proto(record))

    async def RegisterNode(
        self, request: orchestrator_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.RegisterNodeResponse:
        record = await _answer(context, self._lifecycle.adopt(request.endpoint, request.model))
        return orchestrator_pb2.RegisterNodeResponse(node=to_proto(record))

    async def TerminateNode(
        self, request: orchestrator_pb2.TerminateNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.TerminateNodeResponse:
        record = await _answer(context, self._lifecycle.terminate(request.node_id))
        return orchestrator_pb2.TerminateNodeResponse(node=to_proto(record))

    async def GetNode(
        self, request: orchestrator_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GetNodeResponse:
        record = await _answer(context, self._lifecycle.get(request.node_id))
        return orchestrator_pb2.GetNodeResponse(node=to_proto(record))

    async def ListNodes(
        self, request: orchestrator_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.ListNodesResponse:
        unknown = [s for s in request.states if s not in _STATES_BY_PROTO]
        if unknown:
            await _abort(context, InvalidNodeRequest(f"states holds an unknown state {unknown[0]}"))
        states = [_STATES_BY_PROTO[s] for s in request.states]
        records = await self._lifecycle.list(states)
        return orchestrator_pb2.ListNodesResponse(nodes=[to_proto(r) for r in records])


async def _answer(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    try:
        return await work
    except NodeError as err:
        await _abort(context, err)


async def _abort(context: grpc.aio.ServicerContext, err: NodeError) -> NoReturn:
    await context.abort(_CODES.get(type(err), grpc.StatusCode.FAILED_PRECONDITION), str(err))
    raise AssertionError("abort returned")
