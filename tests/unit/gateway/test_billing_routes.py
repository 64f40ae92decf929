"""The gateway's billing routes against a fake billing: the Stripe webhook route hands over the
raw body and signature, applies the tenant status billing answers (on this replica at once) and
confirms it; the admin price routes relay to billing and audit the call."""

from __future__ import annotations

import grpc

from cic.billing.v1 import billing_pb2
from tests.unit.gateway.conftest import Gateway

BODY = b'{"id": "evt_1", "type": "invoice.payment_failed", "data": {"object": {}}}'


async def _models(gateway: Gateway, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.session.get(gateway.url + "/v1/models", headers=headers) as resp:
        return resp.status


async def _webhook(gateway: Gateway, body: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with gateway.session.post(
        gateway.url + "/webhooks/stripe", data=body, headers=headers
    ) as resp:
        return resp.status, await resp.json()


async def test_a_webhook_suspends_and_reactivates_the_tenant(gateway: Gateway) -> None:
    tenant_id, _, key = await gateway.new_key()
    assert await _models(gateway, key) == 200
    billing = gateway.services.billing
    billing.webhook_reply = billing_pb2.StripeWebhookResponse(
        event_id="evt_1",
        event_type="invoice.payment_failed",
        tenant_id=tenant_id,
        tenant_status="suspended",
    )
    status, body = await _webhook(gateway, BODY, "t=1,v1=abc")
    assert (status, body) == (200, {"received": True, "event_id": "evt_1", "duplicate": False})
    [delivery] = billing.webhooks
    assert (delivery.payload, delivery.signature) == (BODY, "t=1,v1=abc")  # byte for byte
    assert billing.confirmed == ["evt_1"]
    assert await _models(gateway, key) == 403
    _, tenant = await gateway.admin("GET", f"/admin/tenants/{tenant_id}")
    assert tenant["status"] == "suspended"

    billing.webhook_reply = billing_pb2.StripeWebhookResponse(
        event_id="evt_2", event_type="invoice.paid", tenant_id=tenant_id, tenant_status="active"
    )
    assert (await _webhook(gateway, b"{}", "t=2,v1=def"))[0] == 200
    assert await _models(gateway, key) == 200
    assert billing.confirmed == ["evt_1", "evt_2"]


async def test_a_duplicate_changes_nothing(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    gateway.services.billing.webhook_reply = billing_pb2.StripeWebhookResponse(
        event_id="evt_1", event_type="invoice.payment_failed", duplicate=True
    )
    status, body = await _webhook(gateway, BODY, "t=1,v1=abc")
    assert (status, body["duplicate"]) == (200, True)
    assert gateway.services.billing.confirmed == []
    assert await _models(gateway, key) == 200


async def test_refusals(gateway: Gateway) -> None:
    status, body = await _webhook(gateway, BODY, None)
    assert status == 400 and "Stripe-Signature" in body["error"]["message"]
    assert gateway.services.billing.webhooks == []

    billing = gateway.services.billing
    for code, expected in [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 503),
        (grpc.StatusCode.UNAVAILABLE, 503),
    ]:
        billing.webhook_error = (code, "signature not verified: no match")
        status, body = await _webhook(gateway, BODY, "t=1,v1=bad")
        assert status == expected, code
        assert set(body["error"]) == {"message", "type", "param", "code"}
        if expected == 400:
            assert body["error"]["message"] == "Webhook refused: signature not verified: no match"


async def test_price_routes(gateway: Gateway) -> None:
    status, listed = await gateway.admin("GET", "/admin/prices")
    assert status == 200
    assert [(p["model"], p["prompt_micro_usd_per_mtok"]) for p in listed["data"]] == [
        ("cic-sim-small", 100_000)
    ]
    status, price = await gateway.admin(
        "PUT",
        "/admin/prices/meta-llama/Llama-3-8B",
        {"prompt_micro_usd_per_mtok": 50_000, "completion_micro_usd_per_mtok": 70_000},
    )
    assert status == 200
    assert (price["model"], price["completion_micro_usd_per_mtok"]) == (
        "meta-llama/Llama-3-8B",
        70_000,
    )
    for bad in (
        {"prompt_micro_usd_per_mtok": -1, "completion_micro_usd_per_mtok": 0},
        {"prompt_micro_usd_per_mtok": 0.5, "completion_micro_usd_per_mtok": 0},
        {"prompt_micro_usd_per_mtok": 1},
        {"prompt_micro_usd_per_mtok": 1, "completion_micro_usd_per_mtok": 1, "extra": 1},
    ):
        status, refused = await gateway.admin("PUT", "/admin/prices/m", bad)
        assert status == 400 and refused["error"]["type"] == "invalid_request_error", bad
    assert (await gateway.admin("DELETE", "/admin/prices/meta-llama/Llama-3-8B"))[0] == 204
    assert (await gateway.admin("DELETE", "/admin/prices/meta-llama/Llama-3-8B"))[0] == 404
    status, audit = await gateway.admin("GET", "/admin/audit?limit=1")
    assert audit["data"][0]["detail"]["model"] == "meta-llama/Llama-3-8B"
