"""A scheduler stand-in for the orchestrator's tests: a real in-process gRPC server that keeps
nodes in a dict and records every call it gets."""

from __future__ import annotations

import grpc

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self) -> None:
        self.nodes: dict[str, scheduler_pb2.Node] = {}
        self.in_flight: dict[str, int] = {}
        # A node's vLLM load as the scheduler scrapes it: (running, waiting).
        self.load: dict[str, tuple[float, float]] = {}
        self.calls: list[tuple[str, str]] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self) -> str:
        self._server = grpc.aio.server()
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def count(self, method: str, node_id: str) -> int:
        return self.calls.count((method, node_id))

    def methods_for(self, node_id: str) -> list[str]:
        return [method for method, called_for in self.calls if called_for == node_id]

    def forget(self, node_id: str) -> None:
        """As after the scheduler's registry lost the node (e.g. Redis data lost)."""
        self.nodes.pop(node_id, None)

    async def RegisterNode(self, request, context):
        self.calls.append(("RegisterNode", request.id))
        node = scheduler_pb2.Node(
            id=request.id,
            model=request.model,
            endpoint=request.endpoint,
            state=request.state or scheduler_pb2.NODE_STATE_READY,
            healthy=True,
            labels=dict(request.labels),
        )
        self.nodes[request.id] = node
        return scheduler_pb2.RegisterNodeResponse(node=node)

    async def Heartbeat(self, request, context):
        self.calls.append(("Heartbeat", request.node_id))
        node = await self._known(request.node_id, context)
        return scheduler_pb2.HeartbeatResponse(node=node)

    async def DrainNode(self, request, context):
        self.calls.append(("DrainNode", request.node_id))
        node = await self._known(request.node_id, context)
        node.state = scheduler_pb2.NODE_STATE_DRAINING
        return scheduler_pb2.DrainNodeResponse(node=node)

    async def DeregisterNode(self, request, context):
        self.calls.append(("DeregisterNode", request.node_id))
        await self._known(request.node_id, context)
        del self.nodes[request.node_id]
        return scheduler_pb2.DeregisterNodeResponse()

    async def ListNodes(self, request, context):
        self.calls.append(("ListNodes", request.model))
        nodes = []
        for node in self.nodes.values():
            listed = scheduler_pb2.Node()
            listed.CopyFrom(node)
            listed.in_flight = self.in_flight.get(node.id, 0)
            if node.id in self.load:
                running, waiting = self.load[node.id]
                listed.load.running, listed.load.waiting = running, waiting
            nodes.append(listed)
        return scheduler_pb2.ListNodesResponse(nodes=nodes)

    async def _known(self, node_id: str, context) -> scheduler_pb2.Node:
        if node_id not in self.nodes:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {node_id}")
        return self.nodes[node_id]
