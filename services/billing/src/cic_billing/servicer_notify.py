"""The notification RPCs of ``cic.billing.v1.BillingService``: channels, their deliveries and a
test event (the notifier itself is :mod:`cic_billing.notify`)."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from cic.billing.v1 import billing_pb2
from cic_billing.ledger import DATABASE_UNAVAILABLE, TRANSIENT_DB_ERRORS, db_or_unavailable
from cic_billing.notify.channels import (
    MAX_CHANNELS_PER_OWNER,
    MAX_TENANT_ID_CHARS,
    BadChannel,
    Channel,
    ChannelType,
    Scope,
    TooManyChannels,
    checked,
    target_hint,
)
from cic_billing.notify.deliveries import Delivery
from cic_billing.notify.messages import TEST_KIND
from cic_billing.notify.service import Notifier
from cic_common.events_bus import Event
from cic_common.grpc_replies import abort, stamp

log = logging.getLogger(__name__)

DEFAULT_LISTED = 50
_MAX_ID_CHARS = 100


def _scope_problem(scope: billing_pb2.NotificationScope) -> str | None:
    if scope.operator == bool(scope.tenant_id):
        return "scope must name a tenant or the operator (exactly one)"
    tenant_id = scope.tenant_id
    if len(tenant_id) > MAX_TENANT_ID_CHARS or any(ord(c) < 32 for c in tenant_id):
        return "scope.tenant_id is not a tenant id"
    return None


def _channel_id_problem(channel_id: str) -> str | None:
    if not channel_id or len(channel_id) > _MAX_ID_CHARS or "\x00" in channel_id:
        return "channel_id is empty or invalid"
    return None


def channel_message(channel: Channel) -> billing_pb2.NotificationChannel:
    return billing_pb2.NotificationChannel(
        id=channel.id,
        tenant_id=channel.tenant_id or "",
        type=channel.type.value,
        name=channel.name,
        target_hint=target_hint(channel),
        event_kinds=channel.event_kinds,
        enabled=channel.enabled,
        created_at=stamp(channel.created_at),
    )


def delivery_message(delivery: Delivery) -> billing_pb2.NotificationDelivery:
    return billing_pb2.NotificationDelivery(
        id=delivery.id,
        channel_id=delivery.channel_id,
        event_id=delivery.event_id,
        event_kind=delivery.event_kind,
        tenant_id=delivery.tenant_id or "",
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=stamp(delivery.next_attempt_at),
        created_at=stamp(delivery.created_at),
        updated_at=stamp(delivery.updated_at),
        attempt_log=[
            billing_pb2.NotificationAttempt(
                attempt=a.attempt,
                at=stamp(a.at),
                status_code=a.status_code or 0,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in delivery.log
        ],
    )


class NotificationRpcs:
    """Set by the service after it builds the servicer that mixes this in."""

    notifier: Notifier

    async def _scope(
        self, scope: billing_pb2.NotificationScope, context: grpc.aio.ServicerContext
    ) -> Scope:
        problem = _scope_problem(scope)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        return Scope(None if scope.operator else scope.tenant_id)

    async def CreateNotificationChannel(
        self,
        request: billing_pb2.CreateNotificationChannelRequest,
        context: grpc.aio.ServicerContext,
    ) -> billing_pb2.CreateNotificationChannelResponse:
        scope = await self._scope(request.scope, context)
        try:
            new = checked(scope, request.type, request.name, request.target, request.event_kinds)
        except BadChannel as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if new.type is ChannelType.EMAIL and not self.notifier.email_enabled:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "email channels need billing's SMTP_HOST, which is not set",
            )
        try:
            channel = await self.notifier.channels.create(scope, new)
        except TooManyChannels:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"at most {MAX_CHANNELS_PER_OWNER} channels per owner; delete one first",
            )
        except TRANSIENT_DB_ERRORS:
            await abort(context, grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        log.info(
            "notification channel %s (%s) made for %s",
            channel.id,
            channel.type.value,
            channel.tenant_id or "the operator",
        )
        return billing_pb2.CreateNotificationChannelResponse(
            channel=channel_message(channel), secret=channel.secret or ""
        )

    async def ListNotificationChannels(
        self,
        request: billing_pb2.ListNotificationChannelsRequest,
        context: grpc.aio.ServicerContext,
    ) -> billing_pb2.ListNotificationChannelsResponse:
        scope = await self._scope(request.scope, context)
        async with db_or_unavailable(context):
            channels = await self.notifier.channels.list(scope, request.all_owners)
        return billing_pb2.ListNotificationChannelsResponse(
            channels=[channel_message(c) for c in channels]
        )

    async def DeleteNotificationChannel(
        self,
        request: billing_pb2.DeleteNotificationChannelRequest,
        context: grpc.aio.ServicerContext,
    ) -> billing_pb2.DeleteNotificationChannelResponse:
        scope = await self._scope(request.scope, context)
        await self._check_channel_id(request.channel_id, context)
        async with db_or_unavailable(context):
            found = await self.notifier.channels.delete(scope, request.channel_id)
        if not found:
            await self._not_found(request.channel_id, context)
        log.info("notification channel %s deleted", request.channel_id)
        return billing_pb2.DeleteNotificationChannelResponse()

    async def ListNotificationDeliveries(
        self,
        request: billing_pb2.ListNotificationDeliveriesRequest,
        context: grpc.aio.ServicerContext,
    ) -> billing_pb2.ListNotificationDeliveriesResponse:
        scope = await self._scope(request.scope, context)
        await self._check_channel_id(request.channel_id, context)
        if request.limit < 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "limit is negative")
        limit = request.limit or DEFAULT_LISTED
        async with db_or_unavailable(context):
            found = await self.notifier.deliveries.list(scope, request.channel_id, limit)
        if found is None:
            await self._not_found(request.channel_id, context)
        return billing_pb2.ListNotificationDeliveriesResponse(
            deliveries=[delivery_message(d) for d in found]
        )

    async def TestNotificationChannel(
        self,
        request: billing_pb2.TestNotificationChannelRequest,
        context: grpc.aio.ServicerContext,
    ) -> billing_pb2.NotificationDelivery:
        scope = await self._scope(request.scope, context)
        await self._check_channel_id(request.channel_id, context)
        async with db_or_unavailable(context):
            channel = await self.notifier.channels.get(scope, request.channel_id)
            if channel is None:
                await self._not_found(request.channel_id, context)
            event = Event(
                kind=TEST_KIND,
                tenant_id=channel.tenant_id,
                data={"channel_id": channel.id, "channel_name": channel.name},
            )
            delivery_id = await self.notifier.deliveries.add_test(channel, event)
            delivery = await self.notifier.deliveries.get(delivery_id)
        self.notifier.wake()
        assert delivery is not None
        return delivery_message(delivery)

    async def _check_channel_id(self, channel_id: str, context: grpc.aio.ServicerContext) -> None:
        problem = _channel_id_problem(channel_id)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _not_found(self, channel_id: str, context: grpc.aio.ServicerContext) -> NoReturn:
        await abort(
            context, grpc.StatusCode.NOT_FOUND, f"no notification channel {channel_id[:100]!r}"
        )
