"""A tenant's status change told to the event bus (``tenant.suspended``, ``tenant.activated``),
for the notifications of the operator's and the tenant's own channels."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cic_common.events_bus import EventKind
from cic_gateway.resources import EVENTS

_KIND_BY_STATUS = {
    "suspended": EventKind.TENANT_SUSPENDED,
    "active": EventKind.TENANT_ACTIVATED,
}


async def status_changed(
    app: web.Application, previous: str | None, tenant: dict[str, Any], reason: str
) -> None:
    """Publishes the tenant's new status if it differs from ``previous`` (never raises: the bus
    logs and counts what it could not publish)."""
    kind = _KIND_BY_STATUS.get(tenant["status"])
    if kind is None or tenant["status"] == previous:
        return
    await app[EVENTS].publish(kind, tenant["id"], {"tenant_name": tenant["name"], "reason": reason})
