"""The node registry interface: nodes, their health, and the leases taken on them.

The registry lives in Redis (:mod:`cic_scheduler.registry_redis`), shared by every scheduler
replica; each method is atomic across replicas.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from cic_scheduler.nodes import (
    ExpiredLease,
    Lease,
    LoadSample,
    NodeSpec,
    NodeView,
    Outcome,
    PickRequest,
    Release,
    SchedulerError,
)
from cic_scheduler.policy import LoadScoring, Policy


class NodeRegistry(ABC):
    @abstractmethod
    async def register(self, spec: NodeSpec) -> NodeView:
        """Adds the node or updates the one with its id, keeping that one's leases.

        The registrant vouches that the node's ``/health`` answered: its breaker closes and its
        failure counts start from zero.
        """

    @abstractmethod
    async def heartbeat(self, node_id: str) -> NodeView:
        """Records that the node is alive; raises ``NodeNotFound``."""

    @abstractmethod
    async def drain(self, node_id: str) -> NodeView:
        """No new leases on the node, the ones taken continue; raises ``NodeNotFound`` or
        ``NodeTerminated``."""

    @abstractmethod
    async def deregister(self, node_id: str) -> None:
        """Removes the node and forgets its leases; raises ``NodeNotFound``."""

    @abstractmethod
    async def list_nodes(self, model: str | None = None) -> list[NodeView]:
        """Every node (of ``model``, when given), ordered by id."""

    @abstractmethod
    async def release_and_acquire(
        self, returns: Sequence[tuple[str, Outcome]], picks: Sequence[tuple[PickRequest, Policy]]
    ) -> tuple[list[Release], list[Lease | SchedulerError]]:
        """Gives back each ``(lease_id, outcome)`` of ``returns`` as :meth:`release` does, then
        takes each ``(request, policy)`` of ``picks`` as :meth:`acquire` does (seeing the slots
        just given back), each atomic on its own; a pick that fails gives its error in its
        place instead of raising."""

    async def acquire(self, request: PickRequest, policy: Policy) -> Lease:
        """Lets ``policy`` choose among the nodes that may serve ``request`` (ready, breaker
        closed or admitting its half-open trial, not excluded) and takes a slot on the chosen
        one, atomically. Raises ``ModelNotServed`` when no node of the model is
        launching, ready or draining, ``NoReadyNode`` when none of them may take it."""
        [result] = await self.acquire_many([(request, policy)])
        if isinstance(result, SchedulerError):
            raise result
        return result

    async def acquire_many(
        self, picks: Sequence[tuple[PickRequest, Policy]]
    ) -> list[Lease | SchedulerError]:
        """Like :meth:`acquire` for each ``(request, policy)`` in order, each atomic on its own;
        a pick that fails gives its error in its place instead of raising."""
        return (await self.release_and_acquire((), picks))[1]

    async def release(self, lease_id: str, outcome: Outcome) -> Release:
        """Gives a lease back (an unknown or expired one is ignored) and counts the outcome:
        consecutive node errors open the node's breaker, a success resets the count; the
        half-open trial's success closes the breaker and its node error re-opens it."""
        return (await self.release_many([(lease_id, outcome)]))[0]

    async def release_many(self, returns: Sequence[tuple[str, Outcome]]) -> list[Release]:
        """Like :meth:`release` for each ``(lease_id, outcome)`` in order."""
        return (await self.release_and_acquire(returns, ()))[0]

    @abstractmethod
    async def aclose(self) -> None:
        """Closes what the registry opened itself (not the clients it was given)."""

    @abstractmethod
    async def expire_leases(self) -> list[ExpiredLease]:
        """Gives back every lease older than its TTL (a lost half-open trial re-opens its
        node's breaker); returns them."""

    @abstractmethod
    async def record_probe(self, node_id: str, endpoint: str, ok: bool) -> NodeView | None:
        """Counts one health probe of ``endpoint``: consecutive failures open the breaker, a
        failure re-opens a half-open one and a success closes it. None when the node is gone or
        its endpoint changed."""

    @abstractmethod
    async def update_load(self, node_id: str, sample: LoadSample) -> None:
        """Stores the node's latest load sample (a gone node is ignored)."""

    async def reindex(self, scoring: LoadScoring) -> int:
        """Rebuilds whatever index picks read from the nodes themselves (at start-up, with the
        load weights picks will use); returns the number of nodes. Nothing to do by default."""
        return 0


async def live_nodes(registry: NodeRegistry) -> list[NodeView]:
    """Every node not terminated or failed: the ones signal rounds look at."""
    return [n for n in await registry.list_nodes() if not n.state.is_terminal]
