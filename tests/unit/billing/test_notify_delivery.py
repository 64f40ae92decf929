"""The notifier end to end inside billing: events published on the bus (Redis) reach local
stand-ins for Slack, Discord, a signed webhook and an SMTP server; retries, the delivery log,
tenant isolation, and replicas sharing the work without sending anything twice."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cic.billing.v1 import billing_pb2
from cic_common.events_bus import FIELD, EventKind
from tests.support.mailbox import Mailbox
from tests.support.receivers import Receiver, verify_signature
from tests.unit.billing.notify_support import (
    OPERATOR,
    deliveries,
    event_bus,
    make_channel,
    notifying_billing,
    publish,
    settled,
    tenant,
    wait_for_deliveries,
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    await box.start()
    yield box
    await box.stop()


async def test_each_channel_type_gets_the_event_in_its_own_shape(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver, mailbox: Mailbox
) -> None:
    smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(mailbox.port), "SMTP_SECURITY": "none"}
    async with (
        notifying_billing(database_url, redis_url, redis_prefix, **smtp) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        await make_channel(billing, OPERATOR, "slack", receiver.url("/slack"))
        await make_channel(billing, OPERATOR, "discord", receiver.url("/discord"))
        hook = await make_channel(billing, OPERATOR, "webhook", receiver.url("/hook"))
        await make_channel(billing, OPERATOR, "email", "ops@example.com")
        assert hook.secret.startswith("whsec_") and hook.channel.type == "webhook"

        event_id = await publish(
            bus, EventKind.TENANT_SUSPENDED, "ten_1", tenant_name="Acme", reason="admin"
        )

        [slack] = await receiver.wait_for(1, "/slack")
        assert slack.json() == {"text": "[CIC] Tenant Acme (ten_1) was suspended (admin)"}
        [discord] = await receiver.wait_for(1, "/discord")
        assert discord.json() == {
            "content": "[CIC] Tenant Acme (ten_1) was suspended (admin)",
            "allowed_mentions": {"parse": []},
        }
        [webhook] = await receiver.wait_for(1, "/hook")
        body = webhook.json()
        assert body["id"] == event_id and body["type"] == "tenant.suspended"
        assert body["tenant_id"] == "ten_1"
        assert body["data"] == {"tenant_name": "Acme", "reason": "admin"}
        assert webhook.headers["X-CIC-Event"] == "tenant.suspended"
        assert webhook.headers["X-CIC-Delivery"].startswith("dlv_")
        signature = webhook.headers["X-CIC-Signature"]
        assert verify_signature(hook.secret, signature, webhook.body)
        tampered = webhook.body.replace(b"ten_1", b"ten_2")
        assert not verify_signature(hook.secret, signature, tampered)
        assert not verify_signature("whsec_another", signature, webhook.body)
        mail = await mailbox.next_mail("ops@example.com")
        assert mail["Subject"] == "[CIC] Tenant Acme (ten_1) was suspended (admin)"
        assert mail["X-CIC-Event"] == "tenant.suspended"
        assert "Tenant: ten_1" in mail.get_body(preferencelist=("plain",)).get_content()

        [delivery] = await wait_for_deliveries(billing, OPERATOR, hook.channel.id, settled(1))
        assert (delivery.state, delivery.attempts, delivery.event_id) == ("delivered", 1, event_id)
        assert [(a.attempt, a.status_code, a.error) for a in delivery.attempt_log] == [(1, 200, "")]
        assert delivery.id == webhook.headers["X-CIC-Delivery"]
        assert (
            billing.metric(
                "cic_billing_notifications_total",
                {"channel_type": "webhook", "outcome": "delivered"},
            )
            == 1
        )


async def test_5xx_and_429_are_retried_with_the_same_delivery_id_until_delivered(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        hook = await make_channel(billing, OPERATOR, "webhook", receiver.url())
        receiver.script(500, 429, 503)
        await publish(bus, EventKind.NODE_FAILED, None, node_id="node-1", model="m", reason="x")

        [delivery] = await wait_for_deliveries(billing, OPERATOR, hook.channel.id, settled(1))
        assert (delivery.state, delivery.attempts) == ("delivered", 4)
        assert [(a.attempt, a.status_code) for a in delivery.attempt_log] == [
            (1, 500),
            (2, 429),
            (3, 503),
            (4, 200),
        ]
        assert [a.error for a in delivery.attempt_log] == ["HTTP 500", "HTTP 429", "HTTP 503", ""]
        received = receiver.requests
        assert [r.status for r in received] == [500, 429, 503, 200]
        assert {r.headers["X-CIC-Delivery"] for r in received} == {delivery.id}
        # Every attempt is signed afresh, and each signature verifies.
        assert all(
            verify_signature(hook.secret, r.headers["X-CIC-Signature"], r.body) for r in received
        )
        assert (
            billing.metric(
                "cic_billing_notifications_total",
                {"channel_type": "webhook", "outcome": "retrying"},
            )
            == 3
        )


async def test_other_4xx_is_final_and_retries_stop_after_the_last_attempt(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        refused = await make_channel(billing, OPERATOR, "slack", receiver.url("/refused"))
        await publish(bus, EventKind.NODE_PREEMPTED, None, node_id="node-1", model="m")
        receiver.script(404)
        [delivery] = await wait_for_deliveries(billing, OPERATOR, refused.channel.id, settled(1))
        assert (delivery.state, delivery.attempts) == ("failed", 1)
        assert [(a.status_code, a.error) for a in delivery.attempt_log] == [(404, "HTTP 404")]
        assert len(receiver.requests) == 1
        await billing.stub.DeleteNotificationChannel(
            billing_pb2.DeleteNotificationChannelRequest(
                scope=OPERATOR, channel_id=refused.channel.id
            )
        )

        await make_channel(billing, OPERATOR, "discord", receiver.url("/down"))
        receiver.script(502, 502, 502, 502)  # NOTIFY_MAX_ATTEMPTS is 4
        await publish(bus, EventKind.NODE_PREEMPTED, None, node_id="node-2", model="m")
        down = await receiver.wait_for(4, "/down")
        list_request = billing_pb2.ListNotificationChannelsRequest(scope=OPERATOR)
        [channel] = [
            c
            for c in (await billing.stub.ListNotificationChannels(list_request)).channels
            if c.type == "discord"
        ]
        [gave_up] = await wait_for_deliveries(billing, OPERATOR, channel.id, settled(1))
        assert (gave_up.state, gave_up.attempts) == ("failed", 4)
        assert [r.status for r in down] == [502, 502, 502, 502]


async def test_a_tenant_channel_gets_its_own_tenant_events_only(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        a = await make_channel(billing, tenant("ten_a"), "webhook", receiver.url("/a"))
        b = await make_channel(billing, tenant("ten_b"), "webhook", receiver.url("/b"))
        ops = await make_channel(billing, OPERATOR, "webhook", receiver.url("/ops"))
        only_payments = await make_channel(
            billing, tenant("ten_a"), "webhook", receiver.url("/a-payments"), ["payment.failed"]
        )

        event_a = await publish(bus, EventKind.TENANT_SUSPENDED, "ten_a", reason="r")
        event_b = await publish(bus, EventKind.TENANT_SUSPENDED, "ten_b", reason="r")
        event_node = await publish(bus, EventKind.NODE_FAILED, None, node_id="n", reason="r")
        event_pay = await publish(bus, EventKind.PAYMENT_FAILED, "ten_a")

        # Once the operator has every event, every event has been routed.
        seen = await wait_for_deliveries(billing, OPERATOR, ops.channel.id, settled(4))
        assert {d.event_id for d in seen} == {event_a, event_b, event_node, event_pay}
        got_a = await wait_for_deliveries(billing, tenant("ten_a"), a.channel.id, settled(2))
        assert {d.event_id for d in got_a} == {event_a, event_pay}
        got_b = await wait_for_deliveries(billing, tenant("ten_b"), b.channel.id, settled(1))
        assert [d.event_id for d in got_b] == [event_b]
        assert {d.state for d in seen + got_a + got_b} == {"delivered"}
        payments = await wait_for_deliveries(
            billing, tenant("ten_a"), only_payments.channel.id, settled(1)
        )
        assert [d.event_id for d in payments] == [event_pay]
        assert {r.json()["id"] for r in receiver.requests if r.path == "/a"} == {event_a, event_pay}
        assert [r.json()["id"] for r in receiver.requests if r.path == "/b"] == [event_b]


async def test_two_replicas_share_the_bus_and_send_each_delivery_once(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as first,
        notifying_billing(database_url, redis_url, redis_prefix) as second,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        hook = await make_channel(first, OPERATOR, "webhook", receiver.url())
        published = {await publish(bus, EventKind.PAYMENT_FAILED, f"ten_{i}") for i in range(30)}

        found = await wait_for_deliveries(second, OPERATOR, hook.channel.id, settled(30))
        assert {d.event_id for d in found} == published
        assert all((d.state, d.attempts) == ("delivered", 1) for d in found)
        assert len(receiver.requests) == 30
        assert len({r.headers["X-CIC-Delivery"] for r in receiver.requests}) == 30
        routed = sum(
            b.metric("cic_billing_notification_events_total", {"result": "routed"})
            for b in (first, second)
        )
        assert routed == 30  # each bus entry went to one replica


async def test_an_entry_a_dead_replica_read_is_taken_over(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with notifying_billing(database_url, redis_url, redis_prefix) as first:
        hook = await make_channel(first, tenant("ten_a"), "webhook", receiver.url())
    async with event_bus(redis_url, redis_prefix) as bus:
        client: Redis = bus.redis
        with contextlib.suppress(ResponseError):  # BUSYGROUP: the first replica made it
            await client.xgroup_create(bus.stream, "notifier", id="0", mkstream=True)
        event_id = await publish(bus, EventKind.TENANT_ACTIVATED, "ten_a", reason="paid")
        # A replica reads the entry and dies before routing it.
        [[_, [(_, fields)]]] = await client.xreadgroup("notifier", "dead", {bus.stream: ">"})
        assert FIELD in fields
    async with notifying_billing(
        database_url, redis_url, redis_prefix, NOTIFY_CLAIM_IDLE_S="0.2"
    ) as billing:
        [delivery] = await wait_for_deliveries(
            billing, tenant("ten_a"), hook.channel.id, settled(1)
        )
        assert (delivery.event_id, delivery.state) == (event_id, "delivered")
        assert [r.json()["id"] for r in receiver.requests] == [event_id]


async def test_a_tenant_url_may_not_lead_into_the_private_network(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(
            database_url, redis_url, redis_prefix, NOTIFY_ALLOW_PRIVATE_TARGETS="false"
        ) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        literal = await make_channel(billing, tenant("ten_a"), "webhook", receiver.url())
        named = await make_channel(
            billing, tenant("ten_a"), "slack", f"http://localhost:{receiver.port}/named"
        )
        ops = await make_channel(billing, OPERATOR, "webhook", receiver.url("/ops"))
        await publish(bus, EventKind.TENANT_SUSPENDED, "ten_a", reason="r")

        await receiver.wait_for(1, "/ops")  # the operator's own URL may be private
        for channel in (literal, named):
            [delivery] = await wait_for_deliveries(
                billing, tenant("ten_a"), channel.channel.id, settled(1)
            )
            assert (delivery.state, delivery.attempts) == ("failed", 1)
            assert "non-public address" in delivery.attempt_log[0].error
        assert [r.path for r in receiver.requests] == ["/ops"]
        assert ops.channel.tenant_id == ""


async def test_a_test_event_goes_to_the_one_channel(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with notifying_billing(database_url, redis_url, redis_prefix) as billing:
        hook = await make_channel(billing, tenant("ten_a"), "webhook", receiver.url("/one"))
        await make_channel(billing, tenant("ten_a"), "webhook", receiver.url("/other"))
        delivery = await billing.stub.TestNotificationChannel(
            billing_pb2.TestNotificationChannelRequest(
                scope=tenant("ten_a"), channel_id=hook.channel.id
            )
        )
        assert delivery.event_kind == "notification.test" and delivery.channel_id == hook.channel.id
        [received] = await receiver.wait_for(1, "/one")
        assert received.json()["type"] == "notification.test"
        assert received.headers["X-CIC-Delivery"] == delivery.id
        assert verify_signature(hook.secret, received.headers["X-CIC-Signature"], received.body)
        await wait_for_deliveries(billing, tenant("ten_a"), hook.channel.id, settled(1))
        assert [r.path for r in receiver.requests] == ["/one"]


async def test_settled_events_are_forgotten_after_the_retention(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        hook = await make_channel(billing, OPERATOR, "webhook", receiver.url())
        old = await publish(bus, EventKind.NODE_FAILED, None, node_id="n1")
        await wait_for_deliveries(billing, OPERATOR, hook.channel.id, settled(1))
        receiver.script(*[503] * 10)  # still being retried when the retention passes
        retried = await publish(bus, EventKind.NODE_FAILED, None, node_id="n2")
        await receiver.wait_for(2)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE billing.notification_events SET received_at = now() - interval '31 days'"
            )
        finally:
            await conn.close()

        assert await billing.service.notifier.deliveries.prune(30) == 1
        left = await deliveries(billing, OPERATOR, hook.channel.id)
        assert [d.event_id for d in left] == [retried] and old != retried


async def test_a_tenant_name_cannot_mention_anyone_in_chat(
    database_url: str, redis_url: str, redis_prefix: str, receiver: Receiver
) -> None:
    async with (
        notifying_billing(database_url, redis_url, redis_prefix) as billing,
        event_bus(redis_url, redis_prefix) as bus,
    ):
        await make_channel(billing, OPERATOR, "slack", receiver.url("/slack"))
        await make_channel(billing, OPERATOR, "discord", receiver.url("/discord"))
        await publish(
            bus, EventKind.TENANT_ACTIVATED, "ten_2", tenant_name="<!channel> & @everyone"
        )

        [slack] = await receiver.wait_for(1, "/slack")
        assert slack.json()["text"].startswith("[CIC] Tenant &lt;!channel&gt; &amp; @everyone")
        [discord] = await receiver.wait_for(1, "/discord")
        assert discord.json()["allowed_mentions"] == {"parse": []}
