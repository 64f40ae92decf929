"""``cic.scheduler.v1.SchedulerService`` over gRPC: validates, converts, maps errors to codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_scheduler import convert
from cic_scheduler.core import NodeScheduler
from cic_scheduler.nodes import SchedulerError
from cic_scheduler.route import RouteSession
from cic_scheduler.watch import ChangeKind, NodeEvent, WatchHub

SERVICE_NAME = "cic.scheduler.v1.SchedulerService"


async def _abort(context: grpc.aio.ServicerContext, err: SchedulerError) -> NoReturn:
    await context.abort(convert.status_code(err), str(err))
    raise AssertionError("context.abort returned")


_CHANGE_KINDS = {
    ChangeKind.SNAPSHOT: pb.CHANGE_KIND_SNAPSHOT,
    ChangeKind.UPSERTED: pb.CHANGE_KIND_UPSERTED,
    ChangeKind.REMOVED: pb.CHANGE_KIND_REMOVED,
}


def _watch_response(event: NodeEvent) -> pb.WatchNodesResponse:
    return pb.WatchNodesResponse(
        kind=_CHANGE_KINDS[event.kind], nodes=[convert.node_to_proto(n) for n in event.nodes]
    )


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: NodeScheduler, watch_hub: WatchHub | None = None) -> None:
        self._scheduler = scheduler
        self._watch_hub = watch_hub

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
        try:
            model = convert.optional_model(request.model)
            nodes = await self._scheduler.list_nodes(model)
        except SchedulerError as err:
            await _abort(context, err)
        return pb.ListNodesResponse(nodes=[convert.node_to_proto(n) for n in nodes])

    async def PickNode(
        self, request: pb.PickNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PickNodeResponse:
        try:
            lease = await self._scheduler.pick(convert.pick_request(request))
        except SchedulerError as err:
            await _abort(context, err)
        return convert.picked(lease)

    async def ReleaseNode(
        self, request: pb.ReleaseNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseNodeResponse:
        try:
            lease_id = convert.lease_id(request.lease_id)
            await self._scheduler.release(
                lease_id,
                convert.outcome(request.outcome),
                request.prompt_tokens,
                request.completion_tokens,
            )
        except SchedulerError as err:
            await _abort(context, err)
        return pb.ReleaseNodeResponse()

    async def ReleaseNodes(
        self, request: pb.ReleaseNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseNodesResponse:
        returns = [convert.lease_return(r) for r in request.releases if r.lease_id]
        if returns:
            try:
                await self._scheduler.release_many(returns)
            except SchedulerError as err:  # the registry is unavailable: the caller retries
                await _abort(context, err)
        return pb.ReleaseNodesResponse()

    async def WatchNodes(
        self, request: pb.WatchNodesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchNodesResponse]:
        try:
            model = convert.optional_model(request.model)
        except SchedulerError as err:
            await _abort(context, err)
        hub = self._watch_hub
        if hub is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this scheduler cannot be watched")
            return
        async for event in hub.follow(model):
            yield _watch_response(event)

    async def Route(
        self, request_iterator: AsyncIterator[pb.RouteRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RouteResponse]:
        async for response in RouteSession(self._scheduler).run(request_iterator):
            yield response
