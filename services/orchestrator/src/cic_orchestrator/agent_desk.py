"""The node agent's calls (register, heartbeat, preemption notice), each authenticated by the
node's own token: its SHA-256 digest is stored at launch and compared in constant time."""

from __future__ import annotations

import logging
from datetime import datetime

from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.nodes import (
    LIVE_STATES,
    AgentUnauthenticated,
    InvalidNodeRequest,
    NodeConflict,
    NodeState,
    check_node_id,
    token_matches,
)
from cic_orchestrator.store import NodeStore

log = logging.getLogger(__name__)

KNOWN_CLOUDS = ("aws", "gcp", "azure")
_MAX_NOTICE = 200
BAD_TOKEN = "the node token is not valid for this node"  # noqa: S105 - a message


class AgentDesk:
    def __init__(self, store: NodeStore, lifecycle: NodeLifecycle) -> None:
        self._store = store
        self._lifecycle = lifecycle

    async def _authenticate(self, node_id: str, token: str) -> NodeState:
        check_node_id(node_id)
        found = await self._store.agent_token_digest(node_id)
        # An unknown node is refused like a wrong token (the digest compare runs either way).
        state, digest = found if found is not None else (NodeState.FAILED, "0" * 64)
        if not token_matches(token, digest) or found is None:
            raise AgentUnauthenticated(BAD_TOKEN)
        if state not in LIVE_STATES:
            raise NodeConflict(f"node {node_id} is {state.value}")
        return state

    async def register(self, node_id: str, token: str, agent_version: str) -> NodeState:
        state = await self._authenticate(node_id, token)
        # The agent registers once vLLM's /health answers.
        await self._store.agent_seen(node_id, vllm_healthy=True)
        log.info("node %s: agent %s registered", node_id, agent_version[:40] or "?")
        return state

    async def heartbeat(self, node_id: str, token: str, vllm_healthy: bool) -> NodeState:
        state = await self._authenticate(node_id, token)
        await self._store.agent_seen(node_id, vllm_healthy)
        if not vllm_healthy:
            log.info("node %s: agent reports vLLM's /health failing", node_id)
        return state

    async def preempted(
        self, node_id: str, token: str, cloud: str, notice: str, not_after: datetime | None
    ) -> NodeState:
        await self._authenticate(node_id, token)
        if cloud not in KNOWN_CLOUDS:
            raise InvalidNodeRequest(f"cloud must be one of {', '.join(KNOWN_CLOUDS)}")
        if len(notice) > _MAX_NOTICE or not notice.isprintable():
            raise InvalidNodeRequest(f"notice must be printable, at most {_MAX_NOTICE} characters")
        text = f"{cloud}: {notice or 'preempted'}"
        if not_after is not None:
            text += f" (machine gone at {not_after.isoformat()})"
        await self._store.set_preemption(node_id, text)
        record = await self._lifecycle.get(node_id)
        if record.state is NodeState.DRAINING:
            return record.state  # already leaving (a notice repeated, or a terminate)
        return (await self._lifecycle.preempted(record, not_after)).state
