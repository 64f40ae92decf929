"""The notification-channel routes: relayed to billing with the caller's scope (a tenant's from
its admin-role key, the operator's from the admin token), checked at the edge, 503 while billing
is away; and end to end with the real billing and its notifier: an operator suspends a tenant
through the gateway and the tenant's own signed webhook hears of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2
from cic_common.events_bus import FIELD
from tests.support.net import free_port
from tests.support.receivers import Receiver, verify_signature
from tests.unit.billing.notify_support import notifying_billing
from tests.unit.gateway.conftest import Gateway, StartGateway

HOOK = {"type": "webhook", "target": "https://example.com/hook", "event_kinds": ["payment.failed"]}


async def _call(
    gateway: Gateway, method: str, path: str, key: str, json: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.request(
        method, gateway.url + path, json=json, headers=headers
    ) as resp:
        return resp.status, await resp.json() if resp.content_type == "application/json" else None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


async def test_a_tenant_manages_its_own_channels_with_an_admin_key(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key(role="admin")
    _, _, developer = await gateway.new_key(role="developer")
    billing = gateway.services.billing

    status, created = await _call(gateway, "POST", "/v1/notification-channels", key, HOOK)
    assert status == 201, created
    assert created["tenant_id"] == tenant_id and created["secret"] == "whsec_fake"
    assert created["object"] == "notification_channel" and created["type"] == "webhook"
    call = billing.channel_calls[-1]
    assert isinstance(call, billing_pb2.CreateNotificationChannelRequest)
    assert call.scope == billing_pb2.NotificationScope(tenant_id=tenant_id)
    assert list(call.event_kinds) == ["payment.failed"]

    status, listed = await _call(gateway, "GET", "/v1/notification-channels", key)
    assert status == 200 and [c["id"] for c in listed["data"]] == [created["id"]]
    path = f"/v1/notification-channels/{created['id']}"
    assert (await _call(gateway, "GET", f"{path}/deliveries?limit=5", key))[0] == 200
    assert billing.channel_calls[-1].limit == 5
    status, delivery = await _call(gateway, "POST", f"{path}/test", key)
    assert status == 202 and delivery["event_kind"] == "notification.test"
    assert (await _call(gateway, "DELETE", path, key))[0] == 204
    assert billing.channel_calls[-1].scope.tenant_id == tenant_id

    for method, where in [("GET", "/v1/notification-channels"), ("DELETE", path)]:
        status, body = await _call(gateway, method, where, developer)
        assert status == 403 and body["error"]["code"] == "insufficient_role", where
    status, body = await _call(gateway, "GET", "/v1/notification-channels", "sk-cic-nope")
    assert status == 401


async def test_the_operator_scope_and_edge_checks(gateway: Gateway) -> None:
    billing = gateway.services.billing
    status, created = await gateway.admin("POST", "/admin/notification-channels", HOOK)
    assert status == 201 and created["tenant_id"] is None
    assert billing.channel_calls[-1].scope == billing_pb2.NotificationScope(operator=True)
    status, _ = await gateway.admin("GET", "/admin/notification-channels?all=true")
    assert status == 200 and billing.channel_calls[-1].all_owners

    calls = len(billing.channel_calls)
    for method, path, body, expected in [
        ("POST", "/admin/notification-channels", {**HOOK, "type": "sms"}, 400),
        ("POST", "/admin/notification-channels", {"type": "slack"}, 400),
        ("POST", "/admin/notification-channels", {**HOOK, "extra": 1}, 400),
        ("DELETE", "/admin/notification-channels/not-an-id", None, 404),
        ("GET", "/admin/notification-channels/nch_0123/deliveries", None, 404),
        ("GET", f"/admin/notification-channels/{created['id']}/deliveries?limit=0", None, 400),
        ("GET", f"/admin/notification-channels/{created['id']}/deliveries?limit=x", None, 400),
        # digits to str.isdigit() that int() refuses, and more digits than int() reads
        ("GET", f"/admin/notification-channels/{created['id']}/deliveries?limit=%C2%B2", None, 400),
        (
            "GET",
            f"/admin/notification-channels/{created['id']}/deliveries?limit={'9' * 5000}",
            None,
            400,
        ),
    ]:
        status, answer = await gateway.admin(method, path, body)
        assert status == expected, (method, path, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert len(billing.channel_calls) == calls  # refused before billing was asked

    status, audit = await gateway.admin("GET", "/admin/audit?limit=20")
    created_rows = [
        e
        for e in audit["data"]
        if e["path"] == "/admin/notification-channels" and e["status"] == 201
    ]
    assert created_rows[0]["detail"]["channel_id"] == created["id"]


async def test_billing_away_is_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(BILLING_ADDR=f"127.0.0.1:{free_port()}", GRPC_TIMEOUT_S="2")
    status, body = await gateway.admin("GET", "/admin/notification-channels")
    assert status == 503 and body["error"]["code"] == "service_unavailable"
    status, body = await gateway.admin("POST", "/admin/notification-channels", HOOK)
    assert status == 503


async def test_an_operator_suspension_reaches_the_tenants_signed_webhook(
    start_gateway: StartGateway,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    receiver: Receiver,
) -> None:
    async with notifying_billing(database_url, redis_url, redis_prefix) as billing:
        gateway = await start_gateway(BILLING_ADDR=billing.address)
        tenant_id, _, key = await gateway.new_key(role="admin")
        other_id, _, other_key = await gateway.new_key(role="admin")
        hook = {"type": "webhook", "target": receiver.url("/mine"), "event_kinds": []}
        status, mine = await _call(gateway, "POST", "/v1/notification-channels", key, hook)
        assert status == 201, mine
        other_hook = {**hook, "target": receiver.url("/other")}
        status, other = await _call(
            gateway, "POST", "/v1/notification-channels", other_key, other_hook
        )
        assert status == 201, other
        ops_hook = {"type": "slack", "target": receiver.url("/ops")}
        status, ops = await gateway.admin("POST", "/admin/notification-channels", ops_hook)
        assert status == 201 and ops["secret"] is None

        status, _ = await gateway.admin(
            "PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"}
        )
        assert status == 200
        [received] = await receiver.wait_for(1, "/mine")
        assert received.headers["X-CIC-Event"] == "tenant.suspended"
        assert verify_signature(mine["secret"], received.headers["X-CIC-Signature"], received.body)
        event = received.json()
        assert (event["type"], event["tenant_id"]) == ("tenant.suspended", tenant_id)
        assert event["data"] == {"tenant_name": "T", "reason": "operator"}
        [slack] = await receiver.wait_for(1, "/ops")
        assert slack.json() == {"text": f"[CIC] Tenant T ({tenant_id}) was suspended (operator)"}

        # The same status again is no change, and no event; reactivation is one.
        await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "suspended"})
        await gateway.admin("PATCH", f"/admin/tenants/{tenant_id}", {"status": "active"})
        second = await receiver.wait_for(2, "/mine")
        assert [r.json()["type"] for r in second] == ["tenant.suspended", "tenant.activated"]

        # The operator reads the tenant's delivery log; the other tenant heard nothing.
        status, log = await gateway.admin(
            "GET", f"/admin/notification-channels/{mine['id']}/deliveries"
        )
        assert status == 200
        assert [(d["event_kind"], d["state"]) for d in log["data"]] == [
            ("tenant.activated", "delivered"),
            ("tenant.suspended", "delivered"),
        ]
        status, theirs = await _call(
            gateway, "GET", f"/v1/notification-channels/{other['id']}/deliveries", other_key
        )
        assert (status, theirs["data"]) == (200, [])
        status, body = await _call(
            gateway, "GET", f"/v1/notification-channels/{mine['id']}/deliveries", other_key
        )
        assert status == 404, body
        assert other_id != tenant_id
        assert [r.path for r in receiver.requests].count("/other") == 0


async def test_a_stripe_suspension_is_published_once_per_change(
    gateway: Gateway, redis_url: str, redis_prefix: str
) -> None:
    tenant_id, _, _ = await gateway.new_key()
    billing = gateway.services.billing
    for event_id, event_type, status in [
        ("evt_1", "invoice.payment_failed", "suspended"),
        ("evt_2", "customer.subscription.deleted", "suspended"),  # suspended already
        ("evt_3", "invoice.paid", "active"),
    ]:
        billing.webhook_reply = billing_pb2.StripeWebhookResponse(
            event_id=event_id, event_type=event_type, tenant_id=tenant_id, tenant_status=status
        )
        headers = {"Stripe-Signature": "t=1,v1=abc", "Content-Type": "application/json"}
        async with gateway.session.post(
            gateway.url + "/webhooks/stripe", data=b"{}", headers=headers
        ) as resp:
            assert resp.status == 200
    client = Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{redis_prefix}events")
    finally:
        await client.aclose()
    events = [orjson.loads(fields[FIELD]) for _, fields in entries]
    assert [(e["kind"], e["tenant_id"], e["data"]["reason"]) for e in events] == [
        ("tenant.suspended", tenant_id, "Stripe invoice.payment_failed"),
        ("tenant.activated", tenant_id, "Stripe invoice.paid"),
    ]
    published = gateway.registry.get_sample_value(
        "cic_events_published_total", {"kind": "tenant.suspended", "result": "published"}
    )
    assert published == 1
