"""Notification channels: checked when they are made, stored in ``notification_channels``.

A channel belongs to a tenant (it receives that tenant's events only, of the kinds in
``TENANT_EVENT_KINDS``) or to the operator (``tenant_id`` NULL: every tenant's events and the
operator's own, such as a node's failure). ``target`` is the Slack or Discord incoming-webhook
URL, the webhook's URL (http or https only), or the email address. A webhook channel gets a
signing secret when it is made; it is answered then and never again. URLs are never logged or
listed whole (a Slack or Discord webhook URL is itself a credential): listings show
:func:`target_hint`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from cic_common.events_bus import EVENT_KINDS, TENANT_EVENT_KINDS

MAX_NAME_CHARS = 200
MAX_URL_CHARS = 2000
MAX_EMAIL_CHARS = 254
MAX_CHANNELS_PER_OWNER = 50
MAX_TENANT_ID_CHARS = 200
_EMAIL = re.compile(r"^[^@\s<>,;\"']+@[^@\s<>,;\"']+\.[^@\s<>,;\"']+$")
_HINT_PATH_CHARS = 8


class ChannelType(StrEnum):
    SLACK = "slack"
    DISCORD = "discord"
    EMAIL = "email"
    WEBHOOK = "webhook"


URL_TYPES = frozenset({ChannelType.SLACK, ChannelType.DISCORD, ChannelType.WEBHOOK})


class BadChannel(ValueError):
    """The channel asked for cannot be made; the message says why (safe to show)."""


class TooManyChannels(Exception):
    """The owner has MAX_CHANNELS_PER_OWNER channels already."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Who asks: a tenant (its own channels only) or the operator (``tenant_id`` None)."""

    tenant_id: str | None

    @property
    def operator(self) -> bool:
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    tenant_id: str | None
    type: ChannelType
    name: str
    config: dict[str, Any]
    secret: str | None
    event_kinds: tuple[str, ...]
    enabled: bool
    created_at: datetime

    @property
    def target(self) -> str:
        return str(self.config.get("url") or self.config.get("to") or "")


@dataclass(frozen=True, slots=True)
class NewChannel:
    type: ChannelType
    name: str
    target: str
    event_kinds: tuple[str, ...]


def _text_problem(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a channel's URL, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"target is longer than {MAX_URL_CHARS} characters"
    if any(c.isspace() for c in url) or _text_problem(url):
        return "target contains a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return "target is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "target must be an absolute http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "target must not hold a user name or password"
    return None


def checked(scope: Scope, type_: str, name: str, target: str, kinds: Iterable[str]) -> NewChannel:
    """The channel to make; :class:`BadChannel` naming the first problem."""
    try:
        channel_type = ChannelType(type_)
    except ValueError:
        allowed = ", ".join(t.value for t in ChannelType)
        raise BadChannel(f"type must be one of {allowed}") from None
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or _text_problem(name):
        raise BadChannel(f"name: at most {MAX_NAME_CHARS} characters, no control characters")
    target = target.strip()
    if not target:
        raise BadChannel("target is empty")
    if channel_type in URL_TYPES:
        problem = url_problem(target)
        if problem:
            raise BadChannel(problem)
    elif len(target) > MAX_EMAIL_CHARS or not _EMAIL.match(target) or _text_problem(target):
        raise BadChannel("target must be an email address")
    allowed_kinds = EVENT_KINDS if scope.operator else TENANT_EVENT_KINDS
    unique: list[str] = []
    for kind in kinds:
        if kind not in allowed_kinds:
            known = ", ".join(sorted(allowed_kinds))
            raise BadChannel(f"event_kinds: {kind[:100]!r} is not one of {known}")
        if kind not in unique:
            unique.append(kind)
    return NewChannel(channel_type, name, target, tuple(sorted(unique)))


def target_hint(channel: Channel) -> str:
    """What listings show of the target: an email address whole, a URL's origin and the first
    characters of its path (the rest may be a token)."""
    if channel.type is ChannelType.EMAIL:
        return channel.target
    parts = urlsplit(channel.target)
    path = parts.path or "/"
    shown = path if len(path) <= _HINT_PATH_CHARS else path[:_HINT_PATH_CHARS] + "…"
    return f"{parts.scheme}://{parts.netloc}{shown}"


def new_channel_id() -> str:
    return "nch_" + secrets.token_hex(8)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def channel_from_row(row: asyncpg.Record | Mapping[str, Any]) -> Channel:
    return Channel(
        id=row["id"],
        tenant_id=row["tenant_id"],
        type=ChannelType(row["type"]),
        name=row["name"],
        config=orjson.loads(row["config"]),
        secret=row["secret"],
        event_kinds=tuple(row["event_kinds"]),
        enabled=row["enabled"],
        created_at=row["created_at"],
    )


class ChannelStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, scope: Scope, new: NewChannel) -> Channel:
        """Stores the channel (with a fresh secret for a webhook); :class:`TooManyChannels`."""
        config = {"to": new.target} if new.type is ChannelType.EMAIL else {"url": new.target}
        secret = new_secret() if new.type is ChannelType.WEBHOOK else None
        async with self._pool.acquire() as conn, conn.transaction():
            # One owner's creations in turn, so that the count below holds.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('notification_channels:' || $1))",
                scope.tenant_id or "",
            )
            count = await conn.fetchval(
                "SELECT count(*) FROM notification_channels"
                " WHERE tenant_id IS NOT DISTINCT FROM $1",
                scope.tenant_id,
            )
            if count >= MAX_CHANNELS_PER_OWNER:
                raise TooManyChannels
            row = await conn.fetchrow(
                "INSERT INTO notification_channels"
                " (id, tenant_id, type, name, config, secret, event_kinds)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING *",
                new_channel_id(),
                scope.tenant_id,
                new.type.value,
                new.name,
                orjson.dumps(config).decode(),
                secret,
                list(new.event_kinds),
            )
        assert row is not None
        return channel_from_row(row)

    async def list(self, scope: Scope, all_owners: bool = False) -> list[Channel]:
        """A tenant's channels; the operator's own, or with ``all_owners`` every channel."""
        if scope.operator and all_owners:
            rows = await self._pool.fetch(
                "SELECT * FROM notification_channels ORDER BY created_at, id"
            )
        else:
            rows = await self._pool.fetch(
                "SELECT * FROM notification_channels"
                " WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY created_at, id",
                scope.tenant_id,
            )
        return [channel_from_row(r) for r in rows]

    async def get(self, scope: Scope, channel_id: str) -> Channel | None:
        """The channel, if the scope may see it (the operator sees every channel)."""
        row = await self._pool.fetchrow(
            "SELECT * FROM notification_channels"
            " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
            channel_id,
            scope.tenant_id,
        )
        return channel_from_row(row) if row is not None else None

    async def delete(self, scope: Scope, channel_id: str) -> bool:
        """Deletes the channel with its deliveries; False when the scope sees no such channel."""
        found = await self._pool.fetchval(
            "DELETE FROM notification_channels"
            " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) RETURNING id",
            channel_id,
            scope.tenant_id,
        )
        return found is not None
