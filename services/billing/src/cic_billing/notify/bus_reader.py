"""Reads the event bus (``{prefix}events``) through the consumer group ``notifier`` and routes
each event to its deliveries (:meth:`DeliveryStore.route`), then acknowledges the entry.

Billing replicas share the group, so each entry is routed by one of them; an entry a replica
read but never acknowledged (it crashed, or Postgres was away) is taken over by a live one once
idle for ``NOTIFY_CLAIM_IDLE_S`` (``XAUTOCLAIM``), as the gateway's usage outbox does. Routing is
idempotent (one delivery per channel and event), so an entry routed twice delivers once.
Entries are acknowledged, not deleted: other readers may have groups of their own, and the
publishers trim the stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cic_billing.ledger import TRANSIENT_DB_ERRORS
from cic_billing.metrics import BillingMetrics
from cic_billing.notify.deliveries import DeliveryStore
from cic_common.events_bus import FIELD, STREAM, BadEvent, Event
from cic_common.periodic import cancel_and_wait

log = logging.getLogger(__name__)

GROUP = "notifier"
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_BACKOFF_INITIAL_S = 0.2
_BACKOFF_MAX_S = 10.0

Entry = tuple[bytes, Event | None]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class BusReader:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        deliveries: DeliveryStore,
        metrics: BillingMetrics,
        on_routed: Callable[[], None],
        *,
        claim_idle_s: float = 30.0,
        block_s: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self._redis = redis
        self.stream = f"{prefix}{STREAM}"
        self.consumer = consumer_name()
        self._deliveries = deliveries
        self._metrics = metrics
        self._on_routed = on_routed
        self._claim_idle_s = claim_idle_s
        self._block_s = block_s
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-bus-reader")

    async def close(self) -> None:
        """Stops reading; an entry read but not routed stays pending for another replica."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        backoff = _BACKOFF_INITIAL_S
        need_group, own_pending = True, False
        next_claim = 0.0
        while True:
            try:
                if need_group:
                    await self._create_group()
                    need_group = False
                entries: list[Entry] = []
                if own_pending:
                    entries = await self._read("0")  # what this consumer read and left
                    own_pending = bool(entries)
                if not entries and time.monotonic() >= next_claim:
                    entries = await self._claim_stale()
                    next_claim = time.monotonic() + max(self._claim_idle_s / 2, 0.05)
                if not entries:
                    entries = await self._read(">")
                await self._route(entries)
                backoff = _BACKOFF_INITIAL_S
                continue
            except ResponseError as err:
                if "NOGROUP" in str(err):
                    need_group = True
                    continue
                log.warning("notifier: Redis refused a command (%s); retrying", err)
            except _REDIS_ERRORS as err:
                log.warning("notifier: Redis unreachable (%s); retrying", err)
            except TRANSIENT_DB_ERRORS as err:
                log.warning("notifier: cannot route events, Postgres away (%s); retrying", err)
            except Exception:
                log.exception("notifier: reading the event bus failed; retrying")
            own_pending = True
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _create_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def _read(self, start: str) -> list[Entry]:
        reply: Any = await self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: start},
            count=self._batch_size,
            block=None if start == "0" else max(1, int(self._block_s * 1000)),
        )
        return [_parse(raw) for _, batch in reply or [] for raw in batch if raw[1]]

    async def _claim_stale(self) -> list[Entry]:
        reply: Any = await self._redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=int(self._claim_idle_s * 1000),
            start_id="0-0",
            count=self._batch_size,
        )
        claimed = [_parse(raw) for raw in reply[1] if raw and raw[1]]
        if claimed:
            log.info("notifier: took over %d events another replica left", len(claimed))
        return claimed

    async def _route(self, entries: list[Entry]) -> None:
        for entry_id, event in entries:
            if event is None:
                self._metrics.notification_events.labels("unreadable").inc()
                log.error("notifier: bus entry %s is not an event; skipped", entry_id.decode())
            else:
                made = await self._deliveries.route(event)
                self._metrics.notification_events.labels("routed").inc()
                if made:
                    log.info("event %s (%s): %d deliveries", event.id, event.kind, len(made))
                    self._on_routed()
            await self._redis.xack(self.stream, GROUP, entry_id)


def _parse(raw: tuple[bytes, dict[bytes, bytes]]) -> Entry:
    entry_id, fields = raw
    try:
        return entry_id, Event.from_json(fields[FIELD])
    except (KeyError, BadEvent):
        return entry_id, None
