"""Notifications end to end: the four services as real processes. A tenant makes its own signed
webhook channel through the gateway, the operator a Slack one; an operator suspends the tenant
through the admin API, and both receivers hear of it (gateway -> event bus in Redis -> billing's
notifier -> HTTP), the webhook's signature verifying with the secret shown at creation."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.billing_stack import billing_stack
from tests.support.receivers import Receiver, verify_signature

pytestmark = pytest.mark.e2e


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


async def test_a_suspension_reaches_the_tenants_webhook_and_the_operators_slack(
    database_url: str, redis_url: str, receiver: Receiver
) -> None:
    env = {
        "REDIS_KEY_PREFIX": f"cic-e2e-{secrets.token_hex(4)}:",
        "NOTIFY_ALLOW_PRIVATE_TARGETS": "true",  # the receiver is on 127.0.0.1
        "NOTIFY_POLL_INTERVAL_S": "0.1",
    }
    async with (
        billing_stack("notifications", database_url, redis_url, env) as stack,
        aiohttp.ClientSession() as session,
    ):
        admin = {"X-Admin-Token": stack.config.admin_token}
        url = stack.gateway_url

        async def call(method: str, path: str, headers: dict, json: object = None) -> tuple:
            async with session.request(method, url + path, json=json, headers=headers) as resp:
                return resp.status, await resp.json()

        status, tenant = await call(
            "POST", "/admin/tenants", admin, {"name": "Acme", "email": "ops@acme.example"}
        )
        assert status == 201, tenant
        status, key = await call(
            "POST", f"/admin/tenants/{tenant['id']}/keys", admin, {"name": "k", "role": "admin"}
        )
        assert status == 201, key
        tenant_key = {"Authorization": f"Bearer {key['key']}"}
        hook = {"type": "webhook", "target": receiver.url("/acme"), "event_kinds": []}
        status, channel = await call("POST", "/v1/notification-channels", tenant_key, hook)
        assert status == 201, channel
        slack = {
            "type": "slack",
            "target": receiver.url("/ops"),
            "event_kinds": ["tenant.suspended"],
        }
        status, ops = await call("POST", "/admin/notification-channels", admin, slack)
        assert status == 201, ops

        status, _ = await call(
            "PATCH", f"/admin/tenants/{tenant['id']}", admin, {"status": "suspended"}
        )
        assert status == 200

        [delivered] = await receiver.wait_for(1, "/acme", timeout=30)
        assert delivered.headers["X-CIC-Event"] == "tenant.suspended"
        signature = delivered.headers["X-CIC-Signature"]
        assert verify_signature(channel["secret"], signature, delivered.body)
        assert delivered.json()["tenant_id"] == tenant["id"]
        [told] = await receiver.wait_for(1, "/ops", timeout=30)
        assert told.json() == {
            "text": f"[CIC] Tenant Acme ({tenant['id']}) was suspended (operator)"
        }
        status, log = await call(
            "GET", f"/admin/notification-channels/{channel['id']}/deliveries", admin
        )
        assert status == 200
        assert [(d["event_kind"], d["state"], d["attempts"]) for d in log["data"]] == [
            ("tenant.suspended", "delivered", 1)
        ]
