"""What a notification says: one line for chat and mail subjects, a few lines for mail bodies,
and the JSON body of a signed webhook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from cic_common.events_bus import Event, EventKind

TEST_KIND = "notification.test"  # TestNotificationChannel's event; never on the bus
_MAX_FIELD_CHARS = 300


def _field(data: Mapping[str, Any], name: str, default: str = "?") -> str:
    value = data.get(name)
    text = default if value is None or value == "" else str(value)
    return text[:_MAX_FIELD_CHARS]


def _usd(micro: object) -> str:
    return f"${int(micro) / 1_000_000:,.2f}" if isinstance(micro, int) else "?"


def _tenant(event: Event) -> str:
    name = event.data.get("tenant_name")
    return f"{name} ({event.tenant_id})" if name else f"{event.tenant_id}"


_HEADLINES: dict[str, Callable[[Event], str]] = {
    EventKind.BUDGET_THRESHOLD: lambda e: (
        f"Budget {_field(e.data, 'budget_id')} of tenant {_tenant(e)} reached"
        f" {_field(e.data, 'threshold_pct')}%: {_usd(e.data.get('spent_micro_usd'))}"
        f" of {_usd(e.data.get('limit_micro_usd'))}"
    ),
    EventKind.BUDGET_EXHAUSTED: lambda e: (
        f"Budget {_field(e.data, 'budget_id')} of tenant {_tenant(e)} is exhausted:"
        f" {_usd(e.data.get('spent_micro_usd'))} of {_usd(e.data.get('limit_micro_usd'))}"
    ),
    EventKind.TENANT_SUSPENDED: lambda e: (
        f"Tenant {_tenant(e)} was suspended ({_field(e.data, 'reason', 'no reason given')})"
    ),
    EventKind.TENANT_ACTIVATED: lambda e: (
        f"Tenant {_tenant(e)} is active again ({_field(e.data, 'reason', 'no reason given')})"
    ),
    EventKind.PAYMENT_FAILED: lambda e: f"A payment of tenant {_tenant(e)} failed",
    EventKind.NODE_FAILED: lambda e: (
        f"Node {_field(e.data, 'node_id')} ({_field(e.data, 'model')}) failed:"
        f" {_field(e.data, 'reason')}"
    ),
    EventKind.NODE_PREEMPTED: lambda e: (
        f"Node {_field(e.data, 'node_id')} ({_field(e.data, 'model')}) was preempted:"
        f" {_field(e.data, 'notice', 'notice received')}"
    ),
    TEST_KIND: lambda e: "Test notification from CrossLogic Inference Cloud",
}


def headline(event: Event) -> str:
    """One line saying what happened."""
    make = _HEADLINES.get(event.kind)
    return make(event) if make else f"{event.kind} for {event.tenant_id or 'the platform'}"


def chat_text(event: Event) -> str:
    return f"[CIC] {headline(event)}"


def mail_subject(event: Event) -> str:
    return f"[CIC] {headline(event)}"[:200]


def mail_body(event: Event) -> str:
    lines = [headline(event), "", f"Event: {event.kind} ({event.id})"]
    lines.append(f"Time: {event.at.isoformat()}")
    if event.tenant_id:
        lines.append(f"Tenant: {event.tenant_id}")
    for name, value in sorted(event.data.items()):
        lines.append(f"{name}: {str(value)[:_MAX_FIELD_CHARS]}")
    return "\n".join(lines) + "\n"


def webhook_body(event: Event) -> bytes:
    """What a webhook receives (and what its signature covers, byte for byte)."""
    return orjson.dumps(
        {
            "id": event.id,
            "type": event.kind,
            "tenant_id": event.tenant_id,
            "created_at": event.at.isoformat(),
            "data": dict(event.data),
        }
    )
