"""Usage events: one per request that reached a node, handed to a :class:`UsageSink`.

:class:`BillingUsageSender` is the sink for now: it buffers events in memory and sends them to
billing in batches over gRPC, retrying with back-off while billing is down, and flushes what is
left on shutdown. Billing keys events by request id, so a batch sent twice is counted once.
(Issue 5 puts a durable outbox behind the same interface, so that a gateway restart loses nothing.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    tenant_id: str
    api_key_id: str
    model: str
    node_id: str
    prompt_tokens: int
    completion_tokens: int
    started_at: datetime
    finished_at: datetime
    streamed: bool
    status_code: int


class UsageSink(Protocol):
    def emit(self, record: UsageRecord) -> None:
        """Takes a record without waiting; never raises."""

    async def start(self) -> None: ...

    async def close(self, timeout_s: float) -> None:
        """Delivers what is buffered within ``timeout_s``, then stops."""


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def to_event(record: UsageRecord) -> billing_pb2.UsageEvent:
    return billing_pb2.UsageEvent(
        request_id=record.request_id,
        tenant_id=record.tenant_id,
        api_key_id=record.api_key_id,
        model=record.model,
        node_id=record.node_id,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        started_at=_timestamp(record.started_at),
        finished_at=_timestamp(record.finished_at),
        streamed=record.streamed,
        status_code=record.status_code,
    )


# A batch billing refuses as malformed is retried event by event, and only the events it still
# refuses are given up. Any other failure is retried until billing takes the batch: that
# includes FAILED_PRECONDITION (e.g. a model without a price), which an operator can fix.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT}


class BillingUsageSender:
    def __init__(
        self,
        stub: billing_pb2_grpc.BillingServiceStub,
        metrics: GatewayMetrics,
        *,
        flush_interval_s: float = 0.25,
        batch_size: int = 200,
        max_buffered: int = 100_000,
        rpc_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._stub = stub
        self._metrics = metrics
        self._flush_interval_s = flush_interval_s
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._rpc_timeout_s = rpc_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._buffer: deque[billing_pb2.UsageEvent] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def emit(self, record: UsageRecord) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._metrics.usage_dropped.labels("buffer_full").inc()
            log.error(
                "usage buffer full (%d events); dropped request %s",
                self._max_buffered,
                record.request_id,
            )
            return
        self._buffer.append(to_event(record))
        self._metrics.usage_buffered.set(len(self._buffer))
        if len(self._buffer) >= self._batch_size:
            self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-sender")

    async def close(self, timeout_s: float) -> None:
        """Lets the sender deliver what is buffered (a send under way is not cut short), for
        ``timeout_s`` at most; what is left then is lost and logged."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-sender")
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._buffer:
            self._metrics.usage_dropped.labels("shutdown").inc(len(self._buffer))
            log.error("billing unreachable at shutdown: %d usage events lost", len(self._buffer))
            self._buffer.clear()
        self._metrics.usage_buffered.set(0)

    async def _run(self) -> None:
        backoff = self._backoff_initial_s
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval_s)
                self._wakeup.clear()
            while self._buffer:
                if await self._send_batch(self._rpc_timeout_s):
                    backoff = self._backoff_initial_s
                    continue
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._backoff_max_s)
            if self._closing:
                return

    async def _send_batch(self, timeout_s: float) -> bool:
        """Sends the oldest events; True once billing took them (or refused them for good)."""
        batch = [self._buffer[i] for i in range(min(self._batch_size, len(self._buffer)))]
        try:
            await self._stub.RecordUsage(
                billing_pb2.RecordUsageRequest(events=batch), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in _PERMANENT:
                self._metrics.usage_send_failures.inc()
                log.warning(
                    "sending %d usage events to billing failed: %s", len(batch), err.code().name
                )
                return False
            if len(batch) > 1:
                return await self._send_one_by_one(batch, timeout_s)
            self._metrics.usage_dropped.labels("rejected").inc()
            log.error("billing refused usage event %s: %s", batch[0].request_id, err.details())
        else:
            self._metrics.usage_sent.inc(len(batch))
        self._drop_sent(len(batch))
        return True

    async def _send_one_by_one(self, batch: list[billing_pb2.UsageEvent], timeout_s: float) -> bool:
        sent = 0
        for event in batch:
            try:
                await self._stub.RecordUsage(
                    billing_pb2.RecordUsageRequest(events=[event]), timeout=timeout_s
                )
                self._metrics.usage_sent.inc()
            except grpc.aio.AioRpcError as err:
                if err.code() not in _PERMANENT:
                    self._drop_sent(sent)
                    return False
                self._metrics.usage_dropped.labels("rejected").inc()
                log.error("billing refused usage event %s: %s", event.request_id, err.details())
            sent += 1
        self._drop_sent(sent)
        return True

    def _drop_sent(self, count: int) -> None:
        for _ in range(count):
            self._buffer.popleft()
        self._metrics.usage_buffered.set(len(self._buffer))
