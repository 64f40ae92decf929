"""Following the registry: node changes published on Redis, fanned out to local watchers.

Whatever changes a node (an RPC, the health prober, the lease sweeper, on any replica) publishes
the node's id on one Redis channel under the key prefix. Each replica subscribes once and wakes
its watchers, which read the changed nodes back from the shared registry and report each as it
now is (or as removed). The message carries only the id, so a watcher always reports the
registry's current truth, and a change seen twice is reported once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from cic_common.periodic import cancel_and_wait
from cic_scheduler.nodes import NodeView
from cic_scheduler.registry import NodeRegistry

log = logging.getLogger(__name__)

# A watcher with more changed nodes than this pending is sent a fresh snapshot instead.
MAX_PENDING_NODES = 10_000
_RECONNECT_DELAY_S = 0.5
_EPOCH = datetime.fromtimestamp(0, UTC)


class ChangeKind(StrEnum):
    SNAPSHOT = "snapshot"
    UPSERTED = "upserted"
    REMOVED = "removed"


@dataclass(frozen=True)
class NodeEvent:
    """A snapshot (every node) or one node added/changed (as it is now) or removed (as last
    seen)."""

    kind: ChangeKind
    nodes: Sequence[NodeView]


def changes_channel(key_prefix: str) -> str:
    return f"{key_prefix}nodes:changed"


class NodeChanges:
    """Publishes that a node changed; every replica's :class:`WatchHub` hears it."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self.channel = changes_channel(key_prefix)

    async def node_changed(self, node_id: str) -> None:
        """Never raises: a lost notice delays a watcher's view, it must not fail the change."""
        try:
            await self._redis.publish(self.channel, node_id)
        except RedisError as err:
            log.warning("cannot publish the change of node %s: %s", node_id, err)


def _watched_fields(node: NodeView) -> NodeView:
    """The node without what changes on its own all the time (heartbeat time, load sample)."""
    return dataclasses.replace(node, last_heartbeat=_EPOCH, load=None)


class _Watcher:
    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.resync = False
        self.closed = False
        self.wake = asyncio.Event()

    def notify(self, node_id: str) -> None:
        if len(self.pending) >= MAX_PENDING_NODES:
            self.pending.clear()
            self.resync = True
        else:
            self.pending.add(node_id)
        self.wake.set()

    def notify_all(self) -> None:
        self.pending.clear()
        self.resync = True
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class WatchHub:
    """One Redis subscription per replica, shared by every ``WatchNodes`` stream it serves."""

    def __init__(self, redis: Redis, key_prefix: str, registry: NodeRegistry) -> None:
        self._redis = redis
        self._registry = registry
        self.channel = changes_channel(key_prefix)
        self._watchers: set[_Watcher] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Subscribes (changes published from now on reach every watcher), then listens."""
        self._pubsub = await self._subscribe()
        self._listener = asyncio.create_task(self._listen(), name="node-watch-listener")

    async def stop(self) -> None:
        """Ends every watch stream, then the subscription."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            await cancel_and_wait(listener)
        await self._close_pubsub()

    async def follow(self, model: str | None) -> AsyncIterator[NodeEvent]:
        """A snapshot of the nodes (of ``model``), then every change, until the hub stops."""
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            known = await self._snapshot(model)
            yield NodeEvent(ChangeKind.SNAPSHOT, list(known.values()))
            while True:
                await watcher.wake.wait()
                watcher.wake.clear()
                if watcher.closed:
                    return
                if watcher.resync:
                    watcher.resync = False
                    known = await self._snapshot(model)
                    yield NodeEvent(ChangeKind.SNAPSHOT, list(known.values()))
                    continue
                changed, watcher.pending = watcher.pending, set()
                for event in await self._changes(model, known, changed):
                    yield event
        finally:
            self._watchers.discard(watcher)

    async def _snapshot(self, model: str | None) -> dict[str, NodeView]:
        return {node.id: node for node in await self._registry.list_nodes(model)}

    async def _changes(
        self, model: str | None, known: dict[str, NodeView], changed: set[str]
    ) -> list[NodeEvent]:
        """Reads the changed nodes back and updates ``known``; one event per real change."""
        current = await self._snapshot(model)
        events = []
        for node_id in sorted(changed):
            before, after = known.get(node_id), current.get(node_id)
            if after is not None:
                if before is None or _watched_fields(before) != _watched_fields(after):
                    events.append(NodeEvent(ChangeKind.UPSERTED, [after]))
                known[node_id] = after
            elif before is not None:
                events.append(NodeEvent(ChangeKind.REMOVED, [before]))
                del known[node_id]
        return events

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        return pubsub

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except RedisError:
                pass

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    for watcher in self._watchers:  # notices may have been lost meanwhile
                        watcher.notify_all()
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as err:
                log.warning("node watch subscription lost (%s); resubscribing", err)
                await self._close_pubsub()
                await asyncio.sleep(_RECONNECT_DELAY_S)
                continue
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            node_id = data.decode() if isinstance(data, bytes) else str(data)
            for watcher in self._watchers:
                watcher.notify(node_id)
