"""Deliveries in Postgres: one row per (channel, event), made when the event is routed, with
every attempt at it in ``notification_attempts``.

Routing an event twice (a bus entry read again after a crash) makes no second row: the pair is
unique and the delivery's id is derived from it, so ``X-CIC-Delivery`` is the same on every
attempt. A notifier claims due deliveries under ``FOR UPDATE SKIP LOCKED`` and holds them with a
lease (``lease_until``) while it sends, so two replicas never send the same delivery at once; a
replica that dies mid-send leaves the lease to run out, and the delivery is sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from cic_billing.notify.channels import Channel, Scope, channel_from_row
from cic_common.events_bus import Event

MAX_LISTED = 500
_ERROR_CHARS = 300

_STORE_EVENT = """
INSERT INTO notification_events (id, kind, tenant_id, at, data)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (id) DO NOTHING
"""

# Operator channels get every event of a kind they take; a tenant's channels get that tenant's
# events only (an event with no tenant matches no tenant's channel).
_ROUTE = """
INSERT INTO notification_deliveries (id, channel_id, event_id)
SELECT 'dlv_' || substr(md5(c.id || ':' || $1), 1, 24), c.id, $1
FROM notification_channels c
WHERE c.enabled
  AND (cardinality(c.event_kinds) = 0 OR $2 = ANY (c.event_kinds))
  AND (c.tenant_id IS NULL OR c.tenant_id = $3)
ON CONFLICT (channel_id, event_id) DO NOTHING
RETURNING id
"""

_CLAIM = """
WITH due AS (
    SELECT id FROM notification_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE notification_deliveries d
SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $2),
    updated_at = now()
FROM due
WHERE d.id = due.id
RETURNING d.id AS delivery_id, d.attempts,
    (SELECT row_to_json(e)::text FROM notification_events e WHERE e.id = d.event_id) AS event,
    (SELECT row_to_json(c)::text FROM notification_channels c WHERE c.id = d.channel_id)
        AS channel
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: str
    attempt: int
    channel: Channel
    event: Event


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    at: datetime
    status_code: int | None
    error: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    channel_id: str
    event_id: str
    event_kind: str
    tenant_id: str | None
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str
    created_at: datetime
    updated_at: datetime
    log: tuple[Attempt, ...]


def _event_of(obj: dict[str, Any]) -> Event:
    data = obj["data"]
    return Event(
        kind=obj["kind"],
        tenant_id=obj["tenant_id"],
        data=orjson.loads(data) if isinstance(data, str) else data,
        id=obj["id"],
        at=datetime.fromisoformat(obj["at"]),
    )


def _channel_of(obj: dict[str, Any]) -> Channel:
    obj["config"] = orjson.dumps(obj["config"]).decode()
    obj["created_at"] = datetime.fromisoformat(obj["created_at"])
    return channel_from_row(obj)


async def _store_event(conn: asyncpg.Connection, event: Event) -> None:
    await conn.execute(
        _STORE_EVENT,
        event.id,
        event.kind,
        event.tenant_id,
        event.at,
        orjson.dumps(dict(event.data)).decode(),
    )


class DeliveryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def route(self, event: Event) -> list[str]:
        """Stores the event and makes its deliveries; the ids of those made now."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _store_event(conn, event)
            rows = await conn.fetch(_ROUTE, event.id, event.kind, event.tenant_id)
        return [r["id"] for r in rows]

    async def add_test(self, channel: Channel, event: Event) -> str:
        """A delivery of ``event`` (a test) to ``channel`` alone."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _store_event(conn, event)
            found = await conn.fetchval(
                "INSERT INTO notification_deliveries (id, channel_id, event_id)"
                " VALUES ('dlv_' || substr(md5($1 || ':' || $2), 1, 24), $1, $2) RETURNING id",
                channel.id,
                event.id,
            )
        return str(found)

    async def claim(self, limit: int, lease_s: float) -> list[Claimed]:
        """Up to ``limit`` due deliveries, each leased to this caller for ``lease_s``."""
        rows = await self._pool.fetch(_CLAIM, limit, lease_s)
        return [
            Claimed(
                r["delivery_id"],
                r["attempts"],
                _channel_of(orjson.loads(r["channel"])),
                _event_of(orjson.loads(r["event"])),
            )
            for r in rows
            if r["channel"] is not None and r["event"] is not None  # deleted meanwhile
        ]

    async def record(
        self,
        claimed: Claimed,
        status_code: int | None,
        error: str,
        duration_ms: int,
        retry_in_s: float | None,
    ) -> str:
        """Writes the attempt and the delivery's new state (delivered, pending again after
        ``retry_in_s``, or failed); the state. A delivery another replica took over meanwhile
        keeps its state (only the attempt is written)."""
        state = "delivered" if not error else ("pending" if retry_in_s is not None else "failed")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notification_attempts"
                " (delivery_id, attempt, status_code, error, duration_ms)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                claimed.delivery_id,
                claimed.attempt,
                status_code,
                error[:_ERROR_CHARS],
                duration_ms,
            )
            await conn.execute(
                "UPDATE notification_deliveries SET state = $3, last_status = $4,"
                " last_error = $5, lease_until = NULL, updated_at = now(),"
                " next_attempt_at = CASE WHEN $3 = 'pending'"
                "   THEN now() + make_interval(secs => $6) ELSE next_attempt_at END"
                " WHERE id = $1 AND attempts = $2",
                claimed.delivery_id,
                claimed.attempt,
                state,
                status_code,
                error[:_ERROR_CHARS],
                retry_in_s or 0.0,
            )
        return state

    async def prune(self, retention_days: int) -> int:
        """Forgets events received more than ``retention_days`` ago whose deliveries are all
        settled (their deliveries and attempts with them); how many."""
        deleted = await self._pool.fetchval(
            "WITH gone AS (DELETE FROM notification_events e"
            " WHERE e.received_at < now() - make_interval(days => $1)"
            " AND NOT EXISTS (SELECT 1 FROM notification_deliveries d"
            "   WHERE d.event_id = e.id AND d.state = 'pending')"
            " RETURNING 1) SELECT count(*) FROM gone",
            retention_days,
        )
        return int(deleted or 0)

    async def list(self, scope: Scope, channel_id: str, limit: int) -> list[Delivery] | None:
        """The channel's newest deliveries with their attempts; None when the scope sees no
        such channel."""
        async with self._pool.acquire() as conn:
            owner = await conn.fetchrow(
                "SELECT id FROM notification_channels"
                " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
                channel_id,
                scope.tenant_id,
            )
            if owner is None:
                return None
            rows = await conn.fetch(
                f"{_DELIVERIES} WHERE d.channel_id = $1 ORDER BY d.created_at DESC, d.id LIMIT $2",
                channel_id,
                min(max(limit, 1), MAX_LISTED),
            )
            return await _with_attempts(conn, rows)

    async def get(self, delivery_id: str) -> Delivery | None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(f"{_DELIVERIES} WHERE d.id = $1", delivery_id)
            found = await _with_attempts(conn, rows)
        return found[0] if found else None


_DELIVERIES = (
    "SELECT d.*, e.kind, e.tenant_id FROM notification_deliveries d"
    " JOIN notification_events e ON e.id = d.event_id"
)


async def _with_attempts(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[Delivery]:
    attempts = await conn.fetch(
        "SELECT * FROM notification_attempts WHERE delivery_id = ANY($1::text[])"
        " ORDER BY delivery_id, attempt",
        [r["id"] for r in rows],
    )
    by_delivery: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(
            Attempt(a["attempt"], a["at"], a["status_code"], a["error"], a["duration_ms"])
        )
    return [
        Delivery(
            id=r["id"],
            channel_id=r["channel_id"],
            event_id=r["event_id"],
            event_kind=r["kind"],
            tenant_id=r["tenant_id"],
            state=r["state"],
            attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"] if r["state"] == "pending" else None,
            last_status=r["last_status"],
            last_error=r["last_error"] or "",
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            log=tuple(by_delivery.get(r["id"], ())),
        )
        for r in rows
    ]


def retry_delay_s(attempt: int, initial_s: float, max_s: float, jitter: float) -> float:
    """Exponential back-off after attempt number ``attempt`` (1, 2, ...), scaled by ``jitter``
    (a number in [0.5, 1])."""
    return min(initial_s * 2 ** (attempt - 1), max_s) * jitter
