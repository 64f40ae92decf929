"""``cic.scheduler.v1.SchedulerService`` over gRPC: validates, converts, maps errors to codes."""

from __future__ import annotations

from typing import NoReturn

import grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_scheduler import convert
from cic_scheduler.core import NodeScheduler
from cic_scheduler.nodes import (
    ModelNotServed,
    NodeNotFound,
    NodeTerminated,
    NoReadyNode,
    PickRequest,
    SchedulerError,
)

SERVICE_NAME = "cic.scheduler.v1.SchedulerService"

_CODES: dict[type[SchedulerError], grpc.StatusCode] = {
    convert.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NodeNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotServed: grpc.StatusCode.NOT_FOUND,
    NoReadyNode: grpc.StatusCode.UNAVAILABLE,
    NodeTerminated: grpc.StatusCode.FAILED_PRECONDITION,
}


async def _abort(context: grpc.aio.ServicerContext, err: SchedulerError) -> NoReturn:
    await context.abort(_CODES.get(type(err), grpc.StatusCode.FAILED_PRECONDITION), str(err))
    raise AssertionError("context.abort returned")


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: NodeScheduler) -> None:
        self._scheduler = scheduler

    async def RegisterNode(
        self, request: pb.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterNodeResponse:
        try:
            node = await self._scheduler.register(convert.node_spec(request))
        except SchedulerError as err:
            await _abort(context, err)
        return pb.RegisterNodeResponse(node=convert.node_to_proto(node))

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        try:
            node = await self._scheduler.heartbeat(convert.node_id(request.node_id))
        except SchedulerError as err:
            await _abort(context, err)
        return pb.HeartbeatResponse(node=convert.node_to_proto(node))

    async def DrainNode(
        self, request: pb.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainNodeResponse:
        try:
            node = await self._scheduler.drain(convert.node_id(request.node_id))
        except SchedulerError as err:
            await _abort(context, err)
        return pb.DrainNodeResponse(node=convert.node_to_proto(node))

    async def DeregisterNode(
        self, request: pb.DeregisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterNodeResponse:
        try:
            await self._scheduler.deregister(convert.node_id(request.node_id))
        except SchedulerError as err:
            await _abort(context, err)
        return pb.DeregisterNodeResponse()

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        nodes = await self._scheduler.list_nodes(request.model or None)
        return pb.ListNodesResponse(nodes=[convert.node_to_proto(n) for n in nodes])

    async def PickNode(
        self, request: pb.PickNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PickNodeResponse:
        try:
            pick = PickRequest(
                model=convert.model_name(request.model),
                exclude_node_ids=frozenset(request.exclude_node_ids),
            )
            lease = await self._scheduler.pick(pick)
        except SchedulerError as err:
            await _abort(context, err)
        return pb.PickNodeResponse(node=convert.node_to_proto(lease.node), lease_id=lease.lease_id)

    async def ReleaseNode(
        self, request: pb.ReleaseNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseNodeResponse:
        if not request.lease_id:
            await _abort(context, convert.InvalidArgument("lease_id is required"))
        await self._scheduler.release(
            request.lease_id,
            convert.outcome(request.outcome),
            request.prompt_tokens,
            request.completion_tokens,
        )
        return pb.ReleaseNodeResponse()

    async def ReleaseNodes(
        self, request: pb.ReleaseNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseNodesResponse:
        for release in request.releases:
            if release.lease_id:
                await self._scheduler.release(
                    release.lease_id,
                    convert.outcome(release.outcome),
                    release.prompt_tokens,
                    release.completion_tokens,
                )
        return pb.ReleaseNodesResponse()
