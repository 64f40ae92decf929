"""The node registry interface: nodes, their health, and the leases taken on them.

Issue 2 keeps the registry in one process's memory (:mod:`cic_scheduler.registry_memory`); a
registry shared by scheduler replicas through Redis implements this same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from cic_scheduler.nodes import Lease, NodeSpec, NodeView, Outcome, PickRequest, Release
from cic_scheduler.policy import Policy


class NodeRegistry(ABC):
    @abstractmethod
    async def register(self, spec: NodeSpec) -> NodeView:
        """Adds the node or updates the one with its id, keeping that one's leases.

        The registrant vouches that the node's ``/health`` answered: the node is healthy again
        and its failure counts start from zero.
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
    async def acquire(self, request: PickRequest, policy: Policy) -> Lease:
        """Lets ``policy`` choose among the nodes that may serve ``request`` and takes a slot on
        the chosen one, atomically. Raises ``ModelNotServed`` when no node of the model is
        launching, ready or draining, ``NoReadyNode`` when none of them may take it."""

    @abstractmethod
    async def release(self, lease_id: str, outcome: Outcome) -> Release:
        """Gives a lease back (an unknown or expired one is ignored) and counts the outcome:
        consecutive node errors make the node unhealthy, a success resets the count."""

    @abstractmethod
    async def expire_leases(self) -> list[Lease]:
        """Gives back every lease older than its TTL; returns them."""

    @abstractmethod
    async def record_probe(self, node_id: str, endpoint: str, ok: bool) -> NodeView | None:
        """Counts one health probe of ``endpoint``; one success makes the node healthy,
        consecutive failures unhealthy. None when the node is gone or its endpoint changed."""
