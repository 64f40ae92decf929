"""Notification channels, kept by billing: the operator's (``/admin/notification-channels``:
every tenant's events and the platform's own, such as a node's failure) and a tenant's own
(``/v1/notification-channels``, with an ``admin``-role key: that tenant's events only).

A channel is Slack or Discord (an incoming-webhook URL), email (an address) or a signed
webhook (a URL; the answer to its creation carries the signing secret, shown only then).
Billing checks the channel and sends the notifications; the gateway relays (billing down: 503).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field, StringConstraints

from cic.billing.v1 import billing_pb2
from cic_gateway import store
from cic_gateway.admin import Body, call_billing, listing
from cic_gateway.admin_auth import audit_detail, audit_tenant_call
from cic_gateway.errors import not_found
from cic_gateway.jsonio import json_response, query_limit, read_json_object, validated
from cic_gateway.keys import ADMIN, require_role
from cic_gateway.resources import KEYS

CHANNEL_ID = re.compile(r"^nch_[0-9a-f]{16}$")
MAX_LISTED = 500
_OPERATOR = billing_pb2.NotificationScope(operator=True)


class NewChannel(Body):
    type: Literal["slack", "discord", "email", "webhook"]
    target: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    event_kinds: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=100)]],
        Field(max_length=20),
    ] = []


def _iso(stamp: Timestamp, present: bool = True) -> str | None:
    return stamp.ToDatetime().isoformat() + "Z" if present else None


def channel_json(channel: billing_pb2.NotificationChannel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "object": "notification_channel",
        "tenant_id": channel.tenant_id or None,
        "type": channel.type,
        "name": channel.name,
        "target": channel.target_hint,
        "event_kinds": list(channel.event_kinds),
        "enabled": channel.enabled,
        "created_at": _iso(channel.created_at),
    }


def delivery_json(d: billing_pb2.NotificationDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "notification_delivery",
        "channel_id": d.channel_id,
        "event_id": d.event_id,
        "event_kind": d.event_kind,
        "tenant_id": d.tenant_id or None,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": _iso(d.next_attempt_at, d.HasField("next_attempt_at")),
        "created_at": _iso(d.created_at),
        "updated_at": _iso(d.updated_at),
        "attempt_log": [
            {
                "attempt": a.attempt,
                "at": _iso(a.at),
                "status_code": a.status_code or None,
                "error": a.error or None,
                "duration_ms": a.duration_ms,
            }
            for a in d.attempt_log
        ],
    }


def _channel_id(request: web.Request) -> str:
    """The path's channel id; an id billing could not have made is 404 at once."""
    channel_id = request.match_info["channel_id"]
    if not CHANNEL_ID.match(channel_id):
        raise not_found(f"No notification channel with id '{channel_id[:100]}'.")
    return channel_id


# The routes of both APIs, given the scope of the caller.


async def _list(request: web.Request, scope: billing_pb2.NotificationScope) -> web.Response:
    all_owners = request.query.get("all", "false") == "true" and scope.operator
    reply = await call_billing(
        request,
        "ListNotificationChannels",
        billing_pb2.ListNotificationChannelsRequest(scope=scope, all_owners=all_owners),
    )
    return json_response(listing([channel_json(c) for c in reply.channels]))


async def _create(
    request: web.Request, scope: billing_pb2.NotificationScope
) -> tuple[web.Response, str]:
    _, data = await read_json_object(request)
    body = validated(NewChannel, data)
    reply = await call_billing(
        request,
        "CreateNotificationChannel",
        billing_pb2.CreateNotificationChannelRequest(
            scope=scope,
            type=body.type,
            name=body.name,
            target=body.target,
            event_kinds=body.event_kinds,
        ),
    )
    answer = {**channel_json(reply.channel), "secret": reply.secret or None}
    return json_response(answer, status=201), reply.channel.id


async def _delete(request: web.Request, scope: billing_pb2.NotificationScope) -> str:
    channel_id = _channel_id(request)
    await call_billing(
        request,
        "DeleteNotificationChannel",
        billing_pb2.DeleteNotificationChannelRequest(scope=scope, channel_id=channel_id),
    )
    return channel_id


async def _deliveries(request: web.Request, scope: billing_pb2.NotificationScope) -> web.Response:
    channel_id = _channel_id(request)
    reply = await call_billing(
        request,
        "ListNotificationDeliveries",
        billing_pb2.ListNotificationDeliveriesRequest(
            scope=scope, channel_id=channel_id, limit=query_limit(request, 50, MAX_LISTED)
        ),
    )
    return json_response(listing([delivery_json(d) for d in reply.deliveries]))


async def _test(request: web.Request, scope: billing_pb2.NotificationScope) -> web.Response:
    channel_id = _channel_id(request)
    if request.body_exists:  # none is needed; one that is sent must be a JSON object
        await read_json_object(request)
    delivery = await call_billing(
        request,
        "TestNotificationChannel",
        billing_pb2.TestNotificationChannelRequest(scope=scope, channel_id=channel_id),
    )
    return json_response(delivery_json(delivery), status=202)


# Admin API (operator token; audited by the admin guard).


async def admin_list_channels(request: web.Request) -> web.Response:
    return await _list(request, _OPERATOR)


async def admin_create_channel(request: web.Request) -> web.Response:
    response, channel_id = await _create(request, _OPERATOR)
    audit_detail(request)["channel_id"] = channel_id
    return response


async def admin_delete_channel(request: web.Request) -> web.Response:
    audit_detail(request)["channel_id"] = request.match_info["channel_id"][:100]
    await _delete(request, _OPERATOR)
    return web.Response(status=204)


async def admin_list_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, _OPERATOR)


async def admin_send_test(request: web.Request) -> web.Response:
    audit_detail(request)["channel_id"] = request.match_info["channel_id"][:100]
    return await _test(request, _OPERATOR)


# Tenant API (an admin-role key; its tenant's channels only).


async def _tenant_scope(
    request: web.Request,
) -> tuple[store.KeyAuth, billing_pb2.NotificationScope]:
    auth = await request.app[KEYS].authenticate(request)
    require_role(auth, ADMIN)
    return auth, billing_pb2.NotificationScope(tenant_id=auth.tenant_id)


async def list_channels(request: web.Request) -> web.Response:
    _, scope = await _tenant_scope(request)
    return await _list(request, scope)


async def create_channel(request: web.Request) -> web.Response:
    auth, scope = await _tenant_scope(request)
    response, channel_id = await _create(request, scope)
    await audit_tenant_call(request, auth, 201, channel_id=channel_id)
    return response


async def delete_channel(request: web.Request) -> web.Response:
    auth, scope = await _tenant_scope(request)
    channel_id = await _delete(request, scope)
    await audit_tenant_call(request, auth, 204, channel_id=channel_id)
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    _, scope = await _tenant_scope(request)
    return await _deliveries(request, scope)


async def send_test(request: web.Request) -> web.Response:
    _, scope = await _tenant_scope(request)
    return await _test(request, scope)
