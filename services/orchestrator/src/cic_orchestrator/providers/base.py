"""The interface every node provider implements.

A provider turns a checked :class:`NodeSpec` into a running vLLM server and can find it again
from the JSON ``handle`` it returned (stored with the node), across orchestrator restarts.
Health checks, state and the scheduler are the lifecycle manager's business, not the provider's.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cic_orchestrator.nodes import NodeSpec


class LaunchError(Exception):
    """A provider could not start a node; the message becomes the node's failure reason."""


@dataclass(frozen=True)
class LaunchedNode:
    endpoint: str  # base URL of the node's OpenAI server, e.g. http://127.0.0.1:8000
    handle: dict[str, Any] = field(default_factory=dict)  # JSON, stored as provider_handle


@dataclass(frozen=True)
class NodeStatus:
    alive: bool
    reason: str = ""  # why it is not alive


ALIVE = NodeStatus(alive=True)


class NodeProvider(abc.ABC):
    """Launches and terminates nodes of one kind."""

    name: str  # stored as the node's provider
    # How long a launch may take until /health answers; None: the LAUNCH_TIMEOUT_S setting.
    launch_timeout_s: float | None = None

    @abc.abstractmethod
    def serves_cloud(self, cloud: str) -> bool:
        """Whether LaunchNode's ``cloud`` selects this provider."""

    @abc.abstractmethod
    def check_vllm_args(self, args: Sequence[str]) -> list[str]:
        """Checks server flags against what this provider allows; returns them normalised.
        Raises :class:`~cic_orchestrator.nodes.InvalidNodeRequest` naming a bad flag."""

    def warm_up(self) -> Awaitable[None] | None:
        """Starts any slow preparation in the background and returns what to await for its end
        (None: nothing to prepare). The orchestrator service reports NOT_SERVING until it ends,
        so that a readiness probe sends no launch to a replica that could not answer in time."""
        return None

    async def check_spec(self, spec: NodeSpec) -> None:  # noqa: B027 - most check nothing more
        """Any check of the whole request beyond its flags (raises InvalidNodeRequest)."""

    @abc.abstractmethod
    async def launch(self, spec: NodeSpec) -> LaunchedNode:
        """Starts the node and returns at once (before it is healthy); raises LaunchError. The
        endpoint may be empty when it is known only once the machine is up: see provisioned."""

    async def provisioned(self, node_id: str, handle: Mapping[str, Any]) -> LaunchedNode:
        """Waits until the node's machine is up and returns its endpoint and handle (which may
        now carry the node's ``labels``: where it runs); only called for a node launched
        without an endpoint; raises LaunchError."""
        raise LaunchError(f"{self.name} nodes have their endpoint from the start")

    @abc.abstractmethod
    async def status(self, node_id: str, handle: Mapping[str, Any]) -> NodeStatus:
        """Whether the node's machine or process still runs (not whether it is healthy)."""

    @abc.abstractmethod
    async def terminate(self, node_id: str, handle: Mapping[str, Any]) -> None:
        """Stops the node and frees what it holds; does nothing for a node already gone."""

    @abc.abstractmethod
    async def reclaim(self, node_id: str, handle: Mapping[str, Any]) -> bool:
        """At start-up, for a live node that a previous run left: True if this run can manage it
        again; False if it is lost (whatever remains of it has been cleaned up)."""

    async def orphans(self, live_node_ids: Callable[[], Awaitable[Collection[str]]]) -> list[str]:
        """Ends what this provider runs that no live node owns (after a crash); returns what
        it ended. ``live_node_ids`` is asked only after the provider has listed what it runs,
        so that a node launched meanwhile is never taken for an orphan. Called now and then
        by the leader."""
        return []

    @abc.abstractmethod
    async def shutdown(self) -> list[str]:
        """The orchestrator stops: ends what must not outlive it and returns those node ids
        (nodes on other machines outlive the orchestrator and are left running)."""
