"""What the orchestrator knows about a node, and the errors its operations raise."""

from __future__ import annotations

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
    # The state the row had just before the update that returned it (TerminateNode uses it).
    previous_state: NodeState | None = field(default=None, compare=False)

    @property
    def spec(self) -> NodeSpec:
        return NodeSpec(
            self.id, self.model, self.accelerators, self.cloud, self.vllm_args, self.use_spot
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


class EndpointInUse(NodeError):
    """A live node already has that endpoint (ALREADY_EXISTS)."""
