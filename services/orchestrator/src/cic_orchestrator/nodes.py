"""What the orchestrator knows about a node, and the errors its operations raise."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class NodeState(StrEnum):
    """``launching`` → ``ready`` → ``draining`` → ``terminated``, or ``failed``."""

    LAUNCHING = "launching"
    READY = "ready"
    DRAINING = "draining"
    TERMINATED = "terminated"
    FAILED = "failed"


LIVE_STATES = (NodeState.LAUNCHING, NodeState.READY, NodeState.DRAINING)


class NodeHealth(StrEnum):
    """A ready node's health from three signals (see :mod:`cic_orchestrator.health`); empty
    while it is not judged."""

    UNKNOWN = ""
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    SUSPECT = "suspect"
    DEAD = "dead"


# Per-node agent tokens: shown to the node once (in its task's secrets), stored as SHA-256.
AGENT_TOKEN_PREFIX = "cic-node-"  # noqa: S105 - a prefix, not a secret
_AGENT_TOKEN = re.compile(r"^cic-node-[A-Za-z0-9_-]{43}$")


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_digest: str) -> bool:
    """Whether ``token`` is the one whose digest was stored; compared in constant time."""
    if not stored_digest or not _AGENT_TOKEN.fullmatch(token):
        return False
    return hmac.compare_digest(token_digest(token), stored_digest)


_NODE_ID = re.compile(r"^node-[0-9a-f]{12}$")


def new_node_id() -> str:
    return f"node-{secrets.token_hex(6)}"


def check_node_id(node_id: str) -> str:
    if not _NODE_ID.fullmatch(node_id):
        raise InvalidNodeRequest("node_id must look like node-0123456789ab")
    return node_id


@dataclass(frozen=True)
class NodeSpec:
    """What to launch: checked before it is stored, handed to a provider as it is."""

    node_id: str
    model: str
    accelerators: str = ""
    cloud: str = ""
    vllm_args: tuple[str, ...] = ()
    use_spot: bool = False
    # The node's agent token (the provider hands it to the node; only its digest is stored).
    agent_token: str = field(default="", repr=False, compare=False)
    replaces: str = ""


@dataclass(frozen=True)
class NodeRecord:
    """One row of ``orchestrator.nodes``."""

    id: str
    model: str
    provider: str
    accelerators: str
    cloud: str
    vllm_args: tuple[str, ...]
    state: NodeState
    endpoint: str
    failure_reason: str
    provider_handle: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    use_spot: bool = False
    health: NodeHealth = NodeHealth.UNKNOWN
    agent_seen_at: datetime | None = None
    # What the agent last said of vLLM's /health (None: it has not said).
    agent_vllm_healthy: bool | None = None
    probe_failing_since: datetime | None = None
    has_agent_token: bool = False
    replaces: str = ""
    replaced_by: str = ""
    preemption: str = ""
    # The state the row had just before the update that returned it (TerminateNode uses it).
    previous_state: NodeState | None = field(default=None, compare=False)

    @property
    def spec(self) -> NodeSpec:
        return NodeSpec(
            self.id,
            self.model,
            self.accelerators,
            self.cloud,
            self.vllm_args,
            self.use_spot,
            replaces=self.replaces,
        )


class NodeError(Exception):
    """An operation on nodes was refused; the message is meant for the caller."""


class InvalidNodeRequest(NodeError):
    """The request itself is wrong (INVALID_ARGUMENT)."""


class NodeNotFound(NodeError):
    """No node has that id (NOT_FOUND)."""


class NodeConflict(NodeError):
    """The node's state does not allow the operation (FAILED_PRECONDITION)."""


class NoProviderForCloud(NodeError):
    """No enabled provider launches nodes on that cloud (FAILED_PRECONDITION)."""


class AgentUnauthenticated(NodeError):
    """The agent's token is not the node's (UNAUTHENTICATED)."""


class EndpointInUse(NodeError):
    """A live node already has that endpoint (ALREADY_EXISTS)."""
