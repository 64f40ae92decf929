"""The node registry in this process's memory.

Every method runs without awaiting anything, so on one event loop each is atomic: no other
request can see a node between a pick choosing it and the slot being taken. The registry is
lost on restart; orchestrators re-register their nodes when a heartbeat answers NOT_FOUND.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cic_scheduler.nodes import (
    Lease,
    ModelNotServed,
    NodeNotFound,
    NodeSpec,
    NodeState,
    NodeTerminated,
    NodeView,
    NoReadyNode,
    Outcome,
    PickRequest,
    Release,
)
from cic_scheduler.policy import Policy
from cic_scheduler.registry import NodeRegistry


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Node:
    spec: NodeSpec
    last_heartbeat: datetime
    healthy: bool = True
    probe_failures: int = 0
    request_failures: int = 0
    lease_ids: set[str] = field(default_factory=set)

    def view(self) -> NodeView:
        return NodeView(
            id=self.spec.id,
            model=self.spec.model,
            endpoint=self.spec.endpoint,
            state=self.spec.state,
            labels=dict(self.spec.labels),
            in_flight=len(self.lease_ids),
            healthy=self.healthy,
            last_heartbeat=self.last_heartbeat,
        )

    def mark_healthy(self) -> None:
        self.healthy, self.probe_failures, self.request_failures = True, 0, 0


@dataclass(frozen=True)
class _Lease:
    node_id: str
    expires_at: float


class InMemoryNodeRegistry(NodeRegistry):
    def __init__(
        self,
        lease_ttl_s: float,
        unhealthy_after_failures: int,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._lease_ttl_s = lease_ttl_s
        self._unhealthy_after = unhealthy_after_failures
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._nodes: dict[str, _Node] = {}
        self._leases: dict[str, _Lease] = {}

    def _get(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise NodeNotFound(node_id)
        return node

    async def register(self, spec: NodeSpec) -> NodeView:
        node = self._nodes.get(spec.id)
        if node is None:
            node = _Node(spec=spec, last_heartbeat=self._wall_clock())
            self._nodes[spec.id] = node
        else:
            node.spec, node.last_heartbeat = spec, self._wall_clock()
            node.mark_healthy()
        return node.view()

    async def heartbeat(self, node_id: str) -> NodeView:
        node = self._get(node_id)
        node.last_heartbeat = self._wall_clock()
        return node.view()

    async def drain(self, node_id: str) -> NodeView:
        node = self._get(node_id)
        if node.spec.state.is_terminal:
            raise NodeTerminated(node_id, node.spec.state)
        node.spec = replace(node.spec, state=NodeState.DRAINING)
        return node.view()

    async def deregister(self, node_id: str) -> None:
        node = self._get(node_id)
        for lease_id in node.lease_ids:
            self._leases.pop(lease_id, None)
        del self._nodes[node_id]

    async def list_nodes(self, model: str | None = None) -> list[NodeView]:
        chosen = (n for n in self._nodes.values() if model is None or n.spec.model == model)
        return sorted((n.view() for n in chosen), key=lambda v: v.id)

    async def acquire(self, request: PickRequest, policy: Policy) -> Lease:
        of_model = [
            n.view()
            for n in self._nodes.values()
            if n.spec.model == request.model and not n.spec.state.is_terminal
        ]
        if not of_model:
            raise ModelNotServed(request.model)
        candidates = [
            v for v in of_model if v.serves_traffic and v.id not in request.exclude_node_ids
        ]
        if not candidates:
            raise NoReadyNode(request.model)
        chosen = self._nodes[policy.choose(request, candidates).id]
        lease_id = uuid.uuid4().hex
        chosen.lease_ids.add(lease_id)
        self._leases[lease_id] = _Lease(chosen.spec.id, self._monotonic() + self._lease_ttl_s)
        return Lease(lease_id=lease_id, node=chosen.view())

    async def release(self, lease_id: str, outcome: Outcome) -> Release:
        lease = self._leases.pop(lease_id, None)
        node = self._nodes.get(lease.node_id) if lease is not None else None
        if node is None:
            return Release(node=None)
        node.lease_ids.discard(lease_id)
        was_healthy = node.healthy
        if outcome is Outcome.SUCCESS:
            node.request_failures = 0
        elif outcome is Outcome.NODE_ERROR:
            node.request_failures += 1
            if node.request_failures >= self._unhealthy_after:
                node.healthy = False
        return Release(node=node.view(), marked_unhealthy=was_healthy and not node.healthy)

    async def expire_leases(self) -> list[Lease]:
        now = self._monotonic()
        expired = [lease_id for lease_id, lease in self._leases.items() if lease.expires_at <= now]
        given_back = []
        for lease_id in expired:
            lease = self._leases.pop(lease_id)
            node = self._nodes[lease.node_id]
            node.lease_ids.discard(lease_id)
            given_back.append(Lease(lease_id=lease_id, node=node.view()))
        return given_back

    async def record_probe(self, node_id: str, endpoint: str, ok: bool) -> NodeView | None:
        node = self._nodes.get(node_id)
        if node is None or node.spec.endpoint != endpoint:
            return None
        if ok:
            node.mark_healthy()
        else:
            node.probe_failures += 1
            if node.probe_failures >= self._unhealthy_after:
                node.healthy = False
        return node.view()
