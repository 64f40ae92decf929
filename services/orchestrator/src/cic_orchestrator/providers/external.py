"""Servers that already run (on-premise, manual): adopted by RegisterNode, never started or
stopped by the orchestrator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cic_orchestrator.nodes import InvalidNodeRequest, NodeSpec
from cic_orchestrator.providers.base import (
    ALIVE,
    LaunchedNode,
    LaunchError,
    NodeProvider,
    NodeStatus,
)


class ExternalProvider(NodeProvider):
    name = "external"

    def serves_cloud(self, cloud: str) -> bool:
        return False

    def check_vllm_args(self, args: Sequence[str]) -> list[str]:
        if args:
            raise InvalidNodeRequest("an external node's server flags are its own")
        return []

    async def launch(self, spec: NodeSpec) -> LaunchedNode:
        raise LaunchError("external nodes are registered with RegisterNode, not launched")

    async def status(self, node_id: str, handle: Mapping[str, Any]) -> NodeStatus:
        # Its process is out of reach: only /health (the scheduler's business) tells.
        return ALIVE

    async def terminate(self, node_id: str, handle: Mapping[str, Any]) -> None:
        """Never stops the server: it was running before it was registered."""

    async def reclaim(self, node_id: str, handle: Mapping[str, Any]) -> bool:
        return True

    async def shutdown(self) -> list[str]:
        return []
