"""The notification-channel RPCs of the fake billing: every channel id of billing's shape is a
channel that exists (so that a fuzzer's well-formed ids reach a success), created channels are
listed, and a test of a channel answers a pending delivery."""

from __future__ import annotations

import re
import secrets
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2

_CHANNEL_ID = re.compile(r"^nch_[0-9a-f]{16}$")


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time()))
    return stamp


class FakeNotifications:
    def __init__(self) -> None:
        self.channels: list[billing_pb2.NotificationChannel] = []
        self.channel_calls: list[object] = []

    async def CreateNotificationChannel(self, request, context):
        self.channel_calls.append(request)
        channel = billing_pb2.NotificationChannel(
            id="nch_" + secrets.token_hex(8),
            tenant_id=request.scope.tenant_id,
            type=request.type,
            name=request.name,
            target_hint=request.target[:30],
            event_kinds=request.event_kinds,
            enabled=True,
            created_at=_now(),
        )
        self.channels.append(channel)
        secret = "whsec_fake" if request.type == "webhook" else ""
        return billing_pb2.CreateNotificationChannelResponse(channel=channel, secret=secret)

    async def ListNotificationChannels(self, request, context):
        self.channel_calls.append(request)
        scope = request.scope
        mine = [
            c
            for c in self.channels
            if (scope.operator and request.all_owners) or c.tenant_id == scope.tenant_id
        ]
        return billing_pb2.ListNotificationChannelsResponse(channels=mine)

    async def DeleteNotificationChannel(self, request, context):
        self.channel_calls.append(request)
        await self._known(request.channel_id, context)
        return billing_pb2.DeleteNotificationChannelResponse()

    async def ListNotificationDeliveries(self, request, context):
        self.channel_calls.append(request)
        await self._known(request.channel_id, context)
        return billing_pb2.ListNotificationDeliveriesResponse()

    async def TestNotificationChannel(self, request, context):
        self.channel_calls.append(request)
        await self._known(request.channel_id, context)
        return billing_pb2.NotificationDelivery(
            id="dlv_fake",
            channel_id=request.channel_id,
            event_id="evt_fake",
            event_kind="notification.test",
            tenant_id=request.scope.tenant_id,
            state="pending",
            next_attempt_at=_now(),
            created_at=_now(),
            updated_at=_now(),
        )

    async def _known(self, channel_id: str, context) -> None:
        if not _CHANNEL_ID.match(channel_id):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no notification channel {channel_id!r}"
            )
