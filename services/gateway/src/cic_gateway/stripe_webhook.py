"""``POST /webhooks/stripe``: Stripe's events, handed to billing as received.

The raw body and the ``Stripe-Signature`` header go to billing, which verifies them, records the
event once and answers what it does to a tenant. The gateway owns tenants: it applies the status
(``suspended`` or ``active``), drops the tenant's keys from every replica's cache through the
revocation channel (so a suspended tenant gets 403 everywhere within moments), and confirms to
billing. A bad or stale signature is 400 and changes nothing; when billing or Postgres is out of
reach the answer is 503 and Stripe delivers the event again later.
"""

from __future__ import annotations

import logging

import grpc
from aiohttp import web

from cic.billing.v1 import billing_pb2
from cic_gateway import store, tenant_events
from cic_gateway.errors import ApiError, bad_request, from_grpc_error
from cic_gateway.jsonio import json_response
from cic_gateway.resources import DB, KEYS, REVOCATIONS, SERVICES

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stripe-Signature"
# Stripe's events are a few kilobytes; billing takes up to 1 MiB.
MAX_EVENT_BYTES = 1024 * 1024


async def stripe_webhook(request: web.Request) -> web.Response:
    payload = await request.read()
    if len(payload) > MAX_EVENT_BYTES:
        raise ApiError(413, "The event is too large.", code="request_too_large")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        raise bad_request(f"The {SIGNATURE_HEADER} header is missing.")
    billing = request.app[SERVICES].billing
    call = billing_pb2.StripeWebhookRequest(payload=payload, signature=signature)
    try:
        reply = await billing.HandleStripeWebhook(call)
    except grpc.aio.AioRpcError as err:
        raise _webhook_error(err) from None
    if reply.tenant_status:
        await _apply(request.app, reply.tenant_id, reply.tenant_status, reply.event_type)
        try:
            await billing.ConfirmStripeEvent(
                billing_pb2.ConfirmStripeEventRequest(event_id=reply.event_id)
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err, "billing") from None
    return json_response(
        {"received": True, "event_id": reply.event_id, "duplicate": reply.duplicate}
    )


def _webhook_error(err: grpc.aio.AioRpcError) -> ApiError:
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return bad_request(f"Webhook refused: {err.details()}")
    if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
        log.error("a Stripe webhook arrived but billing has no STRIPE_WEBHOOK_SECRET")
        return ApiError(503, "Webhooks are not configured.", type="server_error")
    return from_grpc_error(err, "billing")


async def _apply(app: web.Application, tenant_id: str, status: str, event_type: str) -> None:
    before = await store.get_tenant(app[DB], tenant_id)
    updated = await store.update_tenant(app[DB], tenant_id, {"status": status})
    if updated is None:
        log.warning("Stripe event for tenant %s, which the gateway does not know", tenant_id)
        return
    app[KEYS].forget_tenant(tenant_id)
    await app[REVOCATIONS].tenant_changed(tenant_id)
    log.info("tenant %s is now %s (Stripe)", tenant_id, status)
    previous = before["status"] if before is not None else None
    await tenant_events.status_changed(app, previous, updated, f"Stripe {event_type}")
