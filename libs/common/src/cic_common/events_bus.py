"""The platform's event bus: a Redis stream, ``{prefix}events``, that any service appends to and
billing's notifier reads (``cic_billing.notify``) to tell operators and tenants what happened.

A publisher builds one :class:`EventBus` from its Redis client and key prefix and calls
``await bus.publish(EventKind.X, tenant_id, {...})``: the event is one ``XADD`` (the stream is
trimmed to about :data:`MAX_EVENTS` entries), given an id and a time. Publishing is never the
reason a request fails: Redis being slow or away is logged and counted
(``cic_events_published_total{result="failed"}``) and ``publish`` returns None within
``timeout_s``. ``tenant_id`` is the tenant the event is about, or None for an event only the
operator sees (a node's failure); a tenant's channels receive that tenant's events only.

The kinds are the :class:`EventKind` values; ``data`` is a small JSON object whose fields each
kind documents below (what the budgets work publishes: ``budget.threshold`` with
``{"budget_id", "threshold_pct", "spent_micro_usd", "limit_micro_usd", "period"}`` and
``budget.exhausted`` with the same fields but ``threshold_pct``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STREAM = "events"
FIELD = b"event"
# The stream keeps about this many events (XADD MAXLEN ~); the notifier reads them in moments.
MAX_EVENTS = 100_000
PUBLISH_TIMEOUT_S = 1.0
MAX_TENANT_ID_CHARS = 200


class EventKind(StrEnum):
    """What happened. ``data`` of each kind:

    - ``budget.threshold``, ``budget.exhausted``: see the module's docstring (tenant event).
    - ``tenant.suspended``, ``tenant.activated``: ``{"tenant_name", "reason"}`` (tenant event).
    - ``payment.failed``: ``{"stripe_event_id", "customer_id"}`` (tenant event).
    - ``node.failed``: ``{"node_id", "model", "provider", "reason"}`` (operator only).
    - ``node.preempted``: ``{"node_id", "model", "provider", "notice"}`` (operator only).
    """

    BUDGET_THRESHOLD = "budget.threshold"
    BUDGET_EXHAUSTED = "budget.exhausted"
    TENANT_SUSPENDED = "tenant.suspended"
    TENANT_ACTIVATED = "tenant.activated"
    PAYMENT_FAILED = "payment.failed"
    NODE_FAILED = "node.failed"
    NODE_PREEMPTED = "node.preempted"


EVENT_KINDS = frozenset(kind.value for kind in EventKind)
# The kinds a tenant's own channels may subscribe to (the rest are the operator's alone).
TENANT_EVENT_KINDS = frozenset(
    {
        EventKind.BUDGET_THRESHOLD,
        EventKind.BUDGET_EXHAUSTED,
        EventKind.TENANT_SUSPENDED,
        EventKind.TENANT_ACTIVATED,
        EventKind.PAYMENT_FAILED,
    }
)


class BadEvent(ValueError):
    """A stream entry that is not an event this module wrote."""


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    tenant_id: str | None
    data: Mapping[str, Any]
    id: str = field(default_factory=new_event_id)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "tenant_id": self.tenant_id,
                "at": self.at.isoformat(),
                "data": dict(self.data),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        """The event ``to_json`` wrote; :class:`BadEvent` for anything else."""
        try:
            obj = orjson.loads(raw)
            event = cls(
                kind=obj["kind"],
                tenant_id=obj["tenant_id"],
                data=obj["data"],
                id=obj["id"],
                at=datetime.fromisoformat(obj["at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise BadEvent(f"not an event: {type(err).__name__}") from None
        if not isinstance(event.id, str) or not event.id or "\x00" in event.id:
            raise BadEvent("the event has no id")
        if not isinstance(event.kind, str) or "\x00" in event.kind:
            raise BadEvent("the event has no kind")
        if event.tenant_id is not None and not _good_tenant_id(event.tenant_id):
            raise BadEvent("the event's tenant_id is not a tenant id")
        if not isinstance(event.data, dict) or event.at.tzinfo is None:
            raise BadEvent("the event's data is not an object or its time has no zone")
        return event


def _good_tenant_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TENANT_ID_CHARS and "\x00" not in value


class EventBusMetrics:
    """Registered once per registry (each service's own, a fresh one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.published = Counter(
            "cic_events_published_total",
            "Events offered to the event bus, by kind and result (published, failed: Redis"
            " slow or away, the event is lost)",
            ["kind", "result"],
            registry=registry,
        )


class EventBus:
    """Appends events to ``{prefix}events``; see the module's docstring."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "cic:",
        metrics: EventBusMetrics | None = None,
        *,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self.redis = redis
        self.stream = f"{prefix}{STREAM}"
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._max_events = max_events

    async def publish(
        self, kind: EventKind | str, tenant_id: str | None, data: Mapping[str, Any]
    ) -> Event | None:
        """The event as published, or None when Redis did not take it within the timeout
        (logged and counted, never raised). An unknown kind or a bad tenant id is a
        programming error: ValueError."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        if tenant_id is not None and not _good_tenant_id(tenant_id):
            raise ValueError("tenant_id must be None or a non-empty tenant id")
        event = Event(kind=str(kind), tenant_id=tenant_id, data=dict(data))
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.redis.xadd(
                    self.stream,
                    {FIELD: event.to_json()},
                    maxlen=self._max_events,
                    approximate=True,
                )
        except (RedisError, OSError, TimeoutError) as err:
            self._count(event.kind, "failed")
            log.error(
                "event %s (%s) not published: %s: %s",
                event.id,
                event.kind,
                type(err).__name__,
                err,
            )
            return None
        self._count(event.kind, "published")
        log.info("event %s published: %s tenant=%s", event.id, event.kind, tenant_id or "-")
        return event

    def _count(self, kind: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.published.labels(kind, result).inc()
