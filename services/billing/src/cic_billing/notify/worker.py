"""Sends due deliveries: claims a batch (leased, see :mod:`.deliveries`), sends each through its
channel type's sender, records the attempt, and schedules a retry (network error, 429, 5xx;
exponential back-off with jitter, or the receiver's ``Retry-After`` when longer) until
``NOTIFY_MAX_ATTEMPTS``, when the delivery is marked failed. Any other answer is final."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cic_billing.ledger import TRANSIENT_DB_ERRORS
from cic_billing.metrics import BillingMetrics
from cic_billing.notify.channels import ChannelType
from cic_billing.notify.deliveries import Claimed, DeliveryStore, retry_delay_s
from cic_billing.notify.senders import Sender, SendResult
from cic_common.periodic import cancel_and_wait

log = logging.getLogger(__name__)

_LEASE_MARGIN_S = 30.0
_PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float

    def retry_in_s(self, attempt: int, result: SendResult) -> float | None:
        """Seconds until the next attempt, or None when there is none."""
        if result.delivered or not result.retryable or attempt >= self.max_attempts:
            return None
        delay = retry_delay_s(attempt, self.initial_s, self.max_s, random.uniform(0.5, 1.0))
        if result.retry_after_s is not None:
            delay = max(delay, min(result.retry_after_s, self.max_s))
        return delay


class DeliveryWorker:
    def __init__(
        self,
        deliveries: DeliveryStore,
        senders: Mapping[ChannelType, Sender],
        metrics: BillingMetrics,
        policy: RetryPolicy,
        *,
        send_timeout_s: float,
        poll_interval_s: float,
        concurrency: int,
        retention_days: int = 30,
    ) -> None:
        self._deliveries = deliveries
        self._senders = senders
        self._metrics = metrics
        self._policy = policy
        self._send_timeout_s = send_timeout_s
        self._poll_interval_s = poll_interval_s
        self._concurrency = concurrency
        self._retention_days = retention_days
        self._next_prune = 0.0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Looks for due deliveries at once (new ones were just made)."""
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-worker")

    async def close(self, timeout_s: float) -> None:
        """Lets the attempts under way finish within ``timeout_s``; one cut short is sent again
        once its lease runs out."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wakeup.set()
        await cancel_and_wait(task, grace_s=timeout_s)

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            await self._prune_now_and_then()
            try:
                claimed = await self._deliveries.claim(
                    self._concurrency, self._send_timeout_s + _LEASE_MARGIN_S
                )
            except TRANSIENT_DB_ERRORS as err:
                log.warning("notifier: cannot claim deliveries, Postgres away (%s)", err)
                claimed = []
            except Exception:
                log.exception("notifier: claiming deliveries failed")
                claimed = []
            if claimed:
                await asyncio.gather(*(self._attempt(c) for c in claimed))
                continue  # there may be more due
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wakeup.wait()

    async def _prune_now_and_then(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + _PRUNE_INTERVAL_S
        try:
            pruned = await self._deliveries.prune(self._retention_days)
        except TRANSIENT_DB_ERRORS as err:
            log.warning("notifier: old deliveries not pruned, Postgres away (%s)", err)
            return
        if pruned:
            log.info("notifier: forgot %d events older than %d days", pruned, self._retention_days)

    async def _attempt(self, claimed: Claimed) -> None:
        channel = claimed.channel
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._send_timeout_s + 1.0):
                result = await self._senders[channel.type].send(
                    channel, claimed.event, claimed.delivery_id
                )
        except TimeoutError:
            result = SendResult(None, "timed out", retryable=True)
        except Exception as err:
            log.exception("notifier: delivery %s: sending failed", claimed.delivery_id)
            result = SendResult(None, f"internal error: {type(err).__name__}", retryable=True)
        duration_ms = int((time.monotonic() - started) * 1000)
        retry_in_s = self._policy.retry_in_s(claimed.attempt, result)
        try:
            state = await self._deliveries.record(
                claimed, result.status_code, result.error, duration_ms, retry_in_s
            )
        except TRANSIENT_DB_ERRORS as err:
            # The lease runs out and the delivery is sent again: at least once.
            log.warning("notifier: delivery %s not recorded: %s", claimed.delivery_id, err)
            return
        outcome = {"pending": "retrying"}.get(state, state)
        self._metrics.notifications.labels(channel.type.value, outcome).inc()
        log_at = logging.INFO if state == "delivered" else logging.WARNING
        log.log(
            log_at,
            "delivery %s of %s to channel %s (%s), attempt %d: %s%s",
            claimed.delivery_id,
            claimed.event.kind,
            channel.id,
            channel.type.value,
            claimed.attempt,
            state,
            f" ({result.error}; next in {retry_in_s:.1f}s)"
            if retry_in_s is not None
            else (f" ({result.error})" if result.error else ""),
        )
