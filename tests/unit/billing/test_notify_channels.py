"""The notification-channel RPCs: what may be made by whom, what listings show (never a whole
URL or a secret), each scope seeing its own channels only; and billing's own publication on the
bus, ``payment.failed`` from Stripe's ``invoice.payment_failed``."""

from __future__ import annotations

import asyncpg
import grpc
import orjson
import pytest
from redis.asyncio import Redis

from cic.billing.v1 import billing_pb2
from cic_billing.notify.senders import SmtpSettings, not_public
from cic_common.events_bus import FIELD
from tests.support.fake_stripe import event_body, signature_header
from tests.unit.billing.notify_support import OPERATOR, make_channel, notifying_billing, tenant
from tests.unit.billing.support import RunningBilling, running_billing

SLACK_URL = "https://hooks.slack.com/services/T000/B000/secret-token"


async def _refusal(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize(
    ("scope", "type_", "target", "kinds", "problem"),
    [
        (billing_pb2.NotificationScope(), "slack", SLACK_URL, [], "scope must name"),
        (
            billing_pb2.NotificationScope(tenant_id="t", operator=True),
            "slack",
            SLACK_URL,
            [],
            "scope must name",
        ),
        (OPERATOR, "sms", SLACK_URL, [], "type must be one of"),
        (OPERATOR, "webhook", "ftp://example.com/hook", [], "http:// or https://"),
        (OPERATOR, "webhook", "file:///etc/passwd", [], "http:// or https://"),
        (OPERATOR, "webhook", "example.com/hook", [], "http:// or https://"),
        (OPERATOR, "webhook", "https://user:pw@example.com/", [], "user name or password"),
        (OPERATOR, "discord", "https://exa mple.com/", [], "space"),
        (OPERATOR, "slack", "", [], "target is empty"),
        (OPERATOR, "email", "not-an-address", [], "email address"),
        (OPERATOR, "slack", SLACK_URL, ["node.exploded"], "is not one of"),
        (tenant("t1"), "slack", SLACK_URL, ["node.failed"], "is not one of"),
    ],
)
async def test_bad_channels_are_refused(
    billing: RunningBilling,
    scope: billing_pb2.NotificationScope,
    type_: str,
    target: str,
    kinds: list[str],
    problem: str,
) -> None:
    code, details = await _refusal(make_channel(billing, scope, type_, target, kinds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem in details, details
    listed = await billing.stub.ListNotificationChannels(
        billing_pb2.ListNotificationChannelsRequest(scope=OPERATOR, all_owners=True)
    )
    assert list(listed.channels) == []


async def test_email_needs_smtp(billing: RunningBilling) -> None:
    code, details = await _refusal(make_channel(billing, OPERATOR, "email", "ops@example.com"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "SMTP_HOST" in details


async def test_listings_hide_the_url_and_the_secret_and_keep_to_their_scope(
    billing: RunningBilling,
) -> None:
    made = await make_channel(
        billing, tenant("t1"), "slack", SLACK_URL, ["tenant.suspended"], name=" alerts "
    )
    assert made.secret == ""  # only webhooks are signed
    channel = made.channel
    assert (channel.tenant_id, channel.type, channel.name) == ("t1", "slack", "alerts")
    assert channel.target_hint == "https://hooks.slack.com/service…"
    assert list(channel.event_kinds) == ["tenant.suspended"]
    hook = await make_channel(billing, tenant("t2"), "webhook", "https://example.com/cic?k=1")
    assert hook.secret.startswith("whsec_") and len(hook.secret) > 40
    ops = await make_channel(billing, OPERATOR, "webhook", "http://10.0.0.5:8080/alerts")
    assert ops.channel.target_hint == "http://10.0.0.5:8080/alerts"

    async def listed(scope: billing_pb2.NotificationScope, all_owners: bool = False) -> list[str]:
        reply = await billing.stub.ListNotificationChannels(
            billing_pb2.ListNotificationChannelsRequest(scope=scope, all_owners=all_owners)
        )
        assert "secret-token" not in str(reply) and "whsec_" not in str(reply)
        return [c.id for c in reply.channels]

    assert await listed(tenant("t1")) == [channel.id]
    assert await listed(tenant("t1"), all_owners=True) == [channel.id]  # not for tenants
    assert await listed(tenant("t2")) == [hook.channel.id]
    assert await listed(OPERATOR) == [ops.channel.id]
    assert await listed(OPERATOR, all_owners=True) == [channel.id, hook.channel.id, ops.channel.id]

    # A tenant cannot see, test or delete another's channel; the operator can.
    for call in (
        billing.stub.DeleteNotificationChannel(
            billing_pb2.DeleteNotificationChannelRequest(scope=tenant("t2"), channel_id=channel.id)
        ),
        billing.stub.ListNotificationDeliveries(
            billing_pb2.ListNotificationDeliveriesRequest(scope=tenant("t2"), channel_id=channel.id)
        ),
        billing.stub.TestNotificationChannel(
            billing_pb2.TestNotificationChannelRequest(scope=tenant("t2"), channel_id=channel.id)
        ),
    ):
        code, details = await _refusal(call)
        assert code == grpc.StatusCode.NOT_FOUND and channel.id in details
    await billing.stub.DeleteNotificationChannel(
        billing_pb2.DeleteNotificationChannelRequest(scope=tenant("t1"), channel_id=channel.id)
    )
    await billing.stub.DeleteNotificationChannel(
        billing_pb2.DeleteNotificationChannelRequest(scope=OPERATOR, channel_id=hook.channel.id)
    )
    assert await listed(OPERATOR, all_owners=True) == [ops.channel.id]
    code, _ = await _refusal(
        billing.stub.DeleteNotificationChannel(
            billing_pb2.DeleteNotificationChannelRequest(scope=OPERATOR, channel_id=channel.id)
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_an_owner_has_at_most_50_channels(billing: RunningBilling) -> None:
    for i in range(50):
        await make_channel(billing, tenant("t1"), "discord", f"https://example.com/{i}")
    code, details = await _refusal(make_channel(billing, tenant("t1"), "discord", SLACK_URL))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "at most 50" in details
    await make_channel(billing, tenant("t2"), "discord", SLACK_URL)  # another owner may


async def test_channel_rpcs_answer_unavailable_without_the_database(database_url: str) -> None:
    async with running_billing(database_url) as billing:
        await billing.service.pool.close()
        code, _ = await _refusal(make_channel(billing, OPERATOR, "slack", SLACK_URL))
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_a_failed_payment_is_published_once(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    secret = "whsec_test_secret"
    async with notifying_billing(
        database_url, redis_url, redis_prefix, STRIPE_WEBHOOK_SECRET=secret
    ) as billing:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO billing.stripe_customers (tenant_id, customer_id)"
                " VALUES ('ten_acme', 'cus_acme')"
            )
        finally:
            await conn.close()
        body = event_body("evt_pay_1", "invoice.payment_failed", "cus_acme")
        for _ in range(2):  # Stripe delivers it again before the gateway confirmed it
            await billing.stub.HandleStripeWebhook(
                billing_pb2.StripeWebhookRequest(
                    payload=body, signature=signature_header(body, secret)
                )
            )
        client = Redis.from_url(redis_url)
        try:
            entries = await client.xrange(f"{redis_prefix}events")
        finally:
            await client.aclose()
    events = [orjson.loads(fields[FIELD]) for _, fields in entries]
    assert [(e["kind"], e["tenant_id"], e["data"]) for e in events] == [
        (
            "payment.failed",
            "ten_acme",
            {"stripe_event_id": "evt_pay_1", "customer_id": "cus_acme"},
        )
    ]


def test_the_smtp_password_is_not_in_the_settings_repr() -> None:
    smtp = SmtpSettings("smtp.example", 587, "starttls", "mailer", "hunter2-secret", "CIC", 5.0)
    assert "hunter2-secret" not in repr(smtp)
    assert smtp.password == "hunter2-secret"


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 to 169.254.169.254, the metadata service
        ("64:ff9b::a00:1", True),  # NAT64 to 10.0.0.1
        ("64:ff9b:1::808:808", True),  # NAT64's local-use prefix
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("::10.0.0.1", True),  # IPv4-compatible
        ("::ffff:192.168.1.1", True),
        ("64:ff9b::808:808", False),  # NAT64 to 8.8.8.8
        ("::ffff:8.8.8.8", False),
        ("2606:4700::1111", False),
    ],
)
def test_ipv6_addresses_that_lead_to_private_ipv4_ones_are_not_public(
    address: str, refused: bool
) -> None:
    assert not_public(address) is refused
