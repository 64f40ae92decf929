"""The scheduler's behaviour, between the gRPC servicer and the node registry: picks through the
routing policy, releases, lease expiry, and the metrics around them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from cic_scheduler.metrics import UNKNOWN_MODEL_LABEL, SchedulerMetrics
from cic_scheduler.nodes import (
    Lease,
    LeaseReturn,
    ModelNotServed,
    NodeSpec,
    NodeState,
    NodeView,
    Outcome,
    PickRequest,
    RegistryUnavailable,
    Release,
    SchedulerError,
)
from cic_scheduler.policy import RoutingPolicies
from cic_scheduler.registry import NodeRegistry
from cic_scheduler.watch import NodeChanges

log = logging.getLogger(__name__)


class NodeScheduler:
    def __init__(
        self,
        registry: NodeRegistry,
        policies: RoutingPolicies,
        metrics: SchedulerMetrics,
        changes: NodeChanges | None = None,
    ) -> None:
        self.registry = registry
        self._policies = policies
        self._metrics = metrics
        self._changes = changes

    async def _changed(self, node_id: str) -> None:
        """Tells every replica's node watchers (``WatchNodes``) that the node changed."""
        if self._changes is not None:
            await self._changes.node_changed(node_id)

    async def refresh_gauges(self) -> None:
        """Sets the node gauges from the whole registry."""
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
        await self._changed(node.id)
        await self.refresh_gauges()
        return node

    async def heartbeat(self, node_id: str) -> NodeView:
        return await self.registry.heartbeat(node_id)

    async def drain(self, node_id: str) -> NodeView:
        node = await self.registry.drain(node_id)
        log.info("node %s draining with %d in flight", node.id, node.in_flight)
        await self._changed(node.id)
        await self.refresh_gauges()
        return node

    async def deregister(self, node_id: str) -> None:
        await self.registry.deregister(node_id)
        log.info("node %s deregistered", node_id)
        await self._changed(node_id)
        await self.refresh_gauges()

    async def list_nodes(self, model: str | None) -> list[NodeView]:
        return await self.registry.list_nodes(model)

    async def pick(self, request: PickRequest) -> Lease:
        [result] = await self.pick_many([request])
        if isinstance(result, SchedulerError):
            raise result
        return result

    async def pick_many(self, requests: Sequence[PickRequest]) -> list[Lease | SchedulerError]:
        """Each request picked as :meth:`pick` would, all in one round trip to the registry; a
        pick that fails gives its error in its place."""
        return (await self.release_and_pick((), requests))[1]

    async def release_and_pick(
        self,
        returns: Sequence[LeaseReturn],
        requests: Sequence[PickRequest],
        answer: Callable[[list[Lease | SchedulerError]], None] | None = None,
    ) -> tuple[bool, list[Lease | SchedulerError]]:
        """Gives ``returns`` back as :meth:`release_many` would, then picks ``requests`` as
        :meth:`pick_many` would (seeing the slots just freed), all in one round trip to the
        registry. Returns whether the leases were given back (not while the registry is
        unavailable: the caller tries them again) and the picks' results.

        ``answer``, if given, gets the picks' results as soon as the registry has answered, and
        the tasks it wakes run before the metrics and the releases' bookkeeping: a caller
        sends its answers first."""
        started = time.perf_counter()
        policies = [self._policies.for_model(r.model) for r in requests]
        pairs = [(r.lease_id, r.outcome) for r in returns]
        released: list[Release] | None = None  # None: not given back
        results: list[Lease | SchedulerError]
        try:
            released, results = await self.registry.release_and_acquire(
                pairs, list(zip(requests, policies, strict=True))
            )
        except RegistryUnavailable as err:
            results = [err] * len(requests)
        elapsed = time.perf_counter() - started
        if answer is not None:
            answer(results)
            await asyncio.sleep(0)
        for request, policy, result in zip(requests, policies, results, strict=True):
            self._metrics.pick_seconds.observe(elapsed)
            self._account_pick(request, policy.name, result)
        if released is None:
            return False, results
        for given_back, release in zip(returns, released, strict=True):
            await self._account(given_back, release)
        return True, results

    def _account_pick(
        self, request: PickRequest, policy: str, result: Lease | SchedulerError
    ) -> None:
        if isinstance(result, ModelNotServed):
            self._metrics.pick_outcomes(UNKNOWN_MODEL_LABEL, policy, "unknown_model").inc()
            return
        if isinstance(result, RegistryUnavailable):
            self._metrics.pick_outcomes(request.model, policy, "registry_unavailable").inc()
            return
        if isinstance(result, SchedulerError):
            self._metrics.pick_outcomes(request.model, policy, "no_node").inc()
            return
        self._metrics.pick_outcomes(request.model, policy, "ok").inc()
        self._metrics.set_in_flight(result.node)
        if result.trial:
            log.info(
                "node %s takes its half-open trial (lease %s)", result.node.id, result.lease_id
            )

    async def release(
        self, lease_id: str, outcome: Outcome, prompt_tokens: int, completion_tokens: int
    ) -> Release:
        [released] = await self.release_many(
            [LeaseReturn(lease_id, outcome, prompt_tokens, completion_tokens)]
        )
        return released

    async def release_many(self, returns: Sequence[LeaseReturn]) -> list[Release]:
        """Gives the leases back in one round trip to the registry, each as :meth:`release`."""
        pairs = [(r.lease_id, r.outcome) for r in returns]
        released = await self.registry.release_many(pairs)
        for given_back, result in zip(returns, released, strict=True):
            await self._account(given_back, result)
        return released

    async def _account(self, given_back: LeaseReturn, released: Release) -> None:
        self._metrics.release_outcomes(given_back.outcome.value).inc()
        node = released.node
        if node is None:
            self._metrics.unknown_lease_releases.inc()
            log.info("release of unknown or expired lease %s ignored", given_back.lease_id)
            return
        self._metrics.set_in_flight(node)
        tokens = self._metrics.released_token_kinds
        tokens(node.model, "prompt").inc(max(given_back.prompt_tokens, 0))
        tokens(node.model, "completion").inc(max(given_back.completion_tokens, 0))
        if released.breaker_closed:
            log.info("node %s: its half-open trial succeeded, breaker closed", node.id)
        changed = released.marked_unhealthy or released.breaker_closed
        if changed or node.state is not NodeState.READY:
            await self._changed(node.id)
        if released.marked_unhealthy:
            log.warning("node %s: breaker opened after node errors", node.id)
        if changed:
            await self.refresh_gauges()

    async def expire_leases(self) -> None:
        expired = await self.registry.expire_leases()
        if not expired:
            return
        self._metrics.leases_expired.inc(len(expired))
        for lease in expired:
            log.warning("lease %s on node %s expired unreleased", lease.lease_id, lease.node_id)
        for node_id in sorted({lease.node_id for lease in expired}):
            await self._changed(node_id)
        await self.refresh_gauges()
