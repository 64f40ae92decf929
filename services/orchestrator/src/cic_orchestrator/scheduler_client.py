"""The scheduler as the orchestrator uses it: register, heartbeat, drain and deregister nodes."""

from __future__ import annotations

import grpc

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_common.grpc_client import create_channel
from cic_orchestrator.labels import node_labels
from cic_orchestrator.nodes import NodeRecord

# Codes that mean "the scheduler cannot be reached now" rather than "it said no".
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def is_unreachable(err: grpc.aio.AioRpcError) -> bool:
    return err.code() in UNREACHABLE


class SchedulerClient:
    """Raises ``grpc.aio.AioRpcError`` for anything but the NOT_FOUND answers it maps to False."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self._channel = create_channel(address, default_timeout_s=timeout_s)
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def register(self, node: NodeRecord) -> None:
        """Adds the node to the scheduler's rotation as READY (an update if it is known), with
        its labels (see :mod:`cic_orchestrator.labels`)."""
        await self._stub.RegisterNode(
            scheduler_pb2.RegisterNodeRequest(
                id=node.id,
                model=node.model,
                endpoint=node.endpoint,
                state=scheduler_pb2.NODE_STATE_READY,
                labels=node_labels(node),
            )
        )

    async def heartbeat(self, node_id: str) -> bool:
        """False when the scheduler does not know the node."""
        return await self._unless_not_found(
            self._stub.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=node_id))
        )

    async def drain(self, node_id: str) -> bool:
        """False when the scheduler does not know the node."""
        return await self._unless_not_found(
            self._stub.DrainNode(scheduler_pb2.DrainNodeRequest(node_id=node_id))
        )

    async def deregister(self, node_id: str, timeout_s: float | None = None) -> None:
        """Removes the node; a node the scheduler does not know is fine."""
        await self._unless_not_found(
            self._stub.DeregisterNode(
                scheduler_pb2.DeregisterNodeRequest(node_id=node_id), timeout=timeout_s
            )
        )

    async def queued_by_model(self) -> dict[str, float]:
        """Requests on each model's nodes that take traffic: running + waiting from the
        node's own vLLM metrics when scraped, else the scheduler's in-flight count."""
        reply = await self._stub.ListNodes(scheduler_pb2.ListNodesRequest())
        queued: dict[str, float] = {}
        for node in reply.nodes:
            if node.state != scheduler_pb2.NODE_STATE_READY:
                continue
            if node.HasField("load"):
                load = node.load.running + node.load.waiting
            else:
                load = float(node.in_flight)
            queued[node.model] = queued.get(node.model, 0.0) + max(load, float(node.in_flight))
        return queued

    async def in_flight_by_node(self) -> dict[str, int]:
        reply = await self._stub.ListNodes(scheduler_pb2.ListNodesRequest())
        return {node.id: int(node.in_flight) for node in reply.nodes}

    async def in_flight(self, node_id: str) -> int | None:
        """Requests in flight on the node, or None when the scheduler does not know it."""
        reply = await self._stub.ListNodes(scheduler_pb2.ListNodesRequest())
        for node in reply.nodes:
            if node.id == node_id:
                return int(node.in_flight)
        return None

    @staticmethod
    async def _unless_not_found(call: grpc.aio.UnaryUnaryCall) -> bool:
        try:
            await call
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True
