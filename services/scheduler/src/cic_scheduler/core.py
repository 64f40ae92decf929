"""The scheduler's behaviour, between the gRPC servicer and the node registry: picks through the
routing policy, releases, lease expiry, and the metrics around them."""

from __future__ import annotations

import logging
import time

from cic_scheduler.metrics import UNKNOWN_MODEL_LABEL, SchedulerMetrics
from cic_scheduler.nodes import (
    Lease,
    ModelNotServed,
    NodeSpec,
    NodeView,
    NoReadyNode,
    Outcome,
    PickRequest,
    Release,
)
from cic_scheduler.policy import Policy
from cic_scheduler.registry import NodeRegistry

log = logging.getLogger(__name__)


class NodeScheduler:
    def __init__(self, registry: NodeRegistry, policy: Policy, metrics: SchedulerMetrics) -> None:
        self.registry = registry
        self._policy = policy
        self._metrics = metrics

    async def _refresh_gauges(self) -> None:
        self._metrics.refresh_nodes(await self.registry.list_nodes())

    async def register(self, spec: NodeSpec) -> NodeView:
        node = await self.registry.register(spec)
        log.info(
            "node %s registered: model %s at %s, %s",
            node.id,
            node.model,
            node.endpoint,
            node.state.value,
        )
        await self._refresh_gauges()
        return node

    async def heartbeat(self, node_id: str) -> NodeView:
        return await self.registry.heartbeat(node_id)

    async def drain(self, node_id: str) -> NodeView:
        node = await self.registry.drain(node_id)
        log.info("node %s draining with %d in flight", node.id, node.in_flight)
        await self._refresh_gauges()
        return node

    async def deregister(self, node_id: str) -> None:
        await self.registry.deregister(node_id)
        log.info("node %s deregistered", node_id)
        await self._refresh_gauges()

    async def list_nodes(self, model: str | None) -> list[NodeView]:
        return await self.registry.list_nodes(model)

    async def pick(self, request: PickRequest) -> Lease:
        started = time.perf_counter()
        try:
            lease = await self.registry.acquire(request, self._policy)
        except ModelNotServed:
            self._metrics.picks.labels(UNKNOWN_MODEL_LABEL, "unknown_model").inc()
            raise
        except NoReadyNode:
            self._metrics.picks.labels(request.model, "no_node").inc()
            raise
        finally:
            self._metrics.pick_seconds.observe(time.perf_counter() - started)
        self._metrics.picks.labels(request.model, "ok").inc()
        self._metrics.set_in_flight(lease.node)
        return lease

    async def release(
        self, lease_id: str, outcome: Outcome, prompt_tokens: int, completion_tokens: int
    ) -> Release:
        released = await self.registry.release(lease_id, outcome)
        self._metrics.releases.labels(outcome.value).inc()
        node = released.node
        if node is None:
            self._metrics.unknown_lease_releases.inc()
            log.info("release of unknown or expired lease %s ignored", lease_id)
            return released
        self._metrics.set_in_flight(node)
        self._metrics.released_tokens.labels(node.model, "prompt").inc(max(prompt_tokens, 0))
        self._metrics.released_tokens.labels(node.model, "completion").inc(
            max(completion_tokens, 0)
        )
        if released.marked_unhealthy:
            log.warning("node %s is unhealthy after consecutive node errors", node.id)
            await self._refresh_gauges()
        return released

    async def expire_leases(self) -> None:
        expired = await self.registry.expire_leases()
        if not expired:
            return
        self._metrics.leases_expired.inc(len(expired))
        for lease in expired:
            log.warning("lease %s on node %s expired unreleased", lease.lease_id, lease.node.id)
        await self._refresh_gauges()
