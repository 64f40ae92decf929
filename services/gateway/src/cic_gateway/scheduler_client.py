"""The scheduler as the gateway sees it: take a lease on a node for a model, give it back."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_gateway.errors import SERVER_ERROR, ApiError

log = logging.getLogger(__name__)

Outcome = scheduler_pb2.Outcome

# How much of the prompt the prefix key covers: requests whose first PREFIX_KEY_CHARS characters
# (system prompt and start of the conversation) agree share a key, so the scheduler's prefix
# affinity sends them to the node whose prefix cache already holds that start.
PREFIX_KEY_CHARS = 512


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    node_id: str
    model: str
    endpoint: str


def no_node(model: str) -> ApiError:
    return ApiError(
        503,
        f"No node is ready to serve model '{model}' right now; try again shortly.",
        type=SERVER_ERROR,
        code="no_ready_node",
    )


def _text_of(content: Any) -> str:
    """A message's content as text: a string, or its parts' text (other parts by their type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                texts.append(text if isinstance(text, str) else f"<{part.get('type')}>")
        return "\n".join(texts)
    return ""


def _prompt_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"{m.get('role')}\x1f{_text_of(m.get('content'))}\x1e"
            for m in messages
            if isinstance(m, Mapping)
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]  # a batch of prompts: routed by its first
    if isinstance(prompt, list):  # token ids
        return " ".join(str(token) for token in prompt)
    return prompt if isinstance(prompt, str) else ""


def prefix_key(body: Mapping[str, Any], chars: int = PREFIX_KEY_CHARS) -> str:
    """A short stable hash (16 hex digits) of the first ``chars`` characters of the request's
    prompt (chat messages with their roles, or the completion prompt); empty when there is none.

    A request's ``cache_salt`` goes into the hash: vLLM shares no prefix cache across salts."""
    text = _prompt_text(body)[:chars]
    if not text:
        return ""
    salt = body.get("cache_salt")
    digest = hashlib.blake2b(digest_size=8)
    digest.update(salt.encode() if isinstance(salt, str) else b"")
    digest.update(b"\x00")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class SchedulerClient:
    def __init__(
        self,
        stub: scheduler_pb2_grpc.SchedulerServiceStub,
        pick_timeout_s: float = 2.0,
        release_timeout_s: float = 2.0,
    ) -> None:
        self._stub = stub
        self._pick_timeout_s = pick_timeout_s
        self._release_timeout_s = release_timeout_s
        self._pending: list[scheduler_pb2.ReleaseNodeRequest] = []
        self._sender: asyncio.Task[None] | None = None

    async def pick(
        self, model: str, exclude_node_ids: tuple[str, ...] = (), prefix_key: str = ""
    ) -> Lease:
        """A lease on a ready node for ``model``; 404 for a model no node serves, else 503.
        ``prefix_key`` (see :func:`prefix_key`) lets the scheduler keep a prompt prefix on one
        node."""
        request = scheduler_pb2.PickNodeRequest(
            model=model, exclude_node_ids=list(exclude_node_ids), prefix_key=prefix_key
        )
        try:
            reply = await self._stub.PickNode(request, timeout=self._pick_timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise ApiError(
                    404,
                    f"The model '{model}' does not exist.",
                    code="model_not_found",
                    param="model",
                ) from None
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                log.warning("PickNode(%s) failed: %s %s", model, err.code().name, err.details())
            raise no_node(model) from None
        node = reply.node
        return Lease(
            lease_id=reply.lease_id,
            node_id=node.id,
            model=model,
            endpoint=node.endpoint.rstrip("/"),
        )

    def release_soon(
        self, lease: Lease, outcome: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Gives the lease back in the background: the response never waits for it, and a
        request cancelled because its client left still gives its lease back.

        Releases go out one ReleaseNodes call at a time: one made while a call is under way
        waits for it and leaves with every other release made meanwhile. An idle gateway sends
        each at once; a busy one sends one call for many requests instead of one each."""
        self._pending.append(
            scheduler_pb2.ReleaseNodeRequest(
                lease_id=lease.lease_id,
                outcome=outcome,  # type: ignore[arg-type]
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        )
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_releases())

    async def _send_releases(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._stub.ReleaseNodes(
                    scheduler_pb2.ReleaseNodesRequest(releases=batch),
                    timeout=self._release_timeout_s,
                )
            except grpc.aio.AioRpcError as err:
                # The scheduler gives back leases nobody released after its lease TTL.
                log.warning("ReleaseNodes (%d leases) failed: %s", len(batch), err.code().name)

    async def drain(self, timeout_s: float) -> None:
        """Waits (up to ``timeout_s``) for the releases still under way."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait({self._sender}, timeout=timeout_s)

    async def list_nodes(self, model: str = "") -> list[scheduler_pb2.Node]:
        reply = await self._stub.ListNodes(scheduler_pb2.ListNodesRequest(model=model))
        return list(reply.nodes)

    async def ready_models(self) -> list[str]:
        """The models with at least one ready, healthy node, sorted."""
        nodes = await self.list_nodes()
        return sorted(
            {n.model for n in nodes if n.state == scheduler_pb2.NODE_STATE_READY and n.healthy}
        )
