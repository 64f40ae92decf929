"""A full run with DEBUG logs — keys made and used, refused keys and admin tokens, Stripe metering
and a forged webhook — and not one secret in any service's log."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import openai
import pytest

from cic_devstack.admin import AdminClient
from tests.support.fake_stripe import FakeStripe
from tests.support.platform import running_platform

MODEL = "cic-sim-small"
MESSAGES = [{"role": "user", "content": "Hello."}]


async def test_no_secret_reaches_a_log_line(
    database_url: str, redis_url: str, redis_prefix: str, fake_stripe: FakeStripe
) -> None:
    stripe_key = f"sk_test_{secrets.token_urlsafe(24)}"
    webhook_secret = f"whsec_{secrets.token_urlsafe(24)}"
    env = {
        "STRIPE_API_KEY": stripe_key,
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        "STRIPE_REPORT_INTERVAL_S": "1",
    }
    name = "reliability/no_secrets_in_logs"
    async with running_platform(
        database_url, redis_url, redis_prefix, name, env=env, log_level="DEBUG"
    ) as stack:
        admin_token = stack.config.admin_token
        log_dir = stack.config.log_dir
        async with aiohttp.ClientSession() as session:
            admin = AdminClient(session, stack.gateway_url, admin_token)
            tenant = await admin.create_tenant("Quiet", "quiet@example.com")
            key = (await admin.create_key(tenant["id"], "k"))["key"]
            revoked = (await admin.create_key(tenant["id"], "gone"))["key"]
            wrong_admin = admin_token[:-4] + "abcd"
            for headers in ({"X-Admin-Token": wrong_admin}, {"Authorization": f"Bearer {key}"}):
                async with session.get(f"{stack.gateway_url}/admin/tenants", headers=headers) as r:
                    assert r.status in (401, 403)
            async with session.post(
                f"{stack.gateway_url}/webhooks/stripe",
                data=b'{"id": "evt_forged", "type": "invoice.paid"}',
                headers={"Stripe-Signature": f"t=1,v1={secrets.token_hex(32)}"},
            ) as r:
                assert r.status == 400
            async with session.get(
                f"{stack.gateway_url}/admin/tenants/{tenant['id']}/keys",
                headers={"X-Admin-Token": admin_token},
            ) as r:
                keys = (await r.json())["data"]
            gone_id = next(k["id"] for k in keys if k["name"] == "gone")
            async with session.delete(
                f"{stack.gateway_url}/admin/keys/{gone_id}", headers={"X-Admin-Token": admin_token}
            ) as r:
                assert r.status == 204

        async with openai.AsyncOpenAI(
            api_key=key, base_url=f"{stack.gateway_url}/v1", max_retries=0
        ) as client:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=3, stream=True
            )
            [_ async for _ in stream]
        for bad in (revoked, key[:-3] + "xyz", "sk-cic-" + secrets.token_urlsafe(40)):
            async with openai.AsyncOpenAI(
                api_key=bad, base_url=f"{stack.gateway_url}/v1", max_retries=0
            ) as client:
                with pytest.raises(openai.AuthenticationError):
                    await client.chat.completions.create(
                        model=MODEL, messages=MESSAGES, max_tokens=3
                    )
        for _ in range(50):  # the usage reaches Stripe: the key was used
            if fake_stripe.sent():
                break
            await asyncio.sleep(0.2)
        assert fake_stripe.sent(), "no meter event reached the fake Stripe"

    assert log_dir is not None
    logs = {path.name: path.read_text() for path in log_dir.glob("*.log")}
    assert {"gateway.log", "billing.log", "scheduler.log", "orchestrator.log"} <= set(logs)
    assert sum(text.count("\n") for text in logs.values()) > 50  # DEBUG: plenty was written
    secret_values = {
        "an API key": key,
        "an API key's secret part": key.removeprefix("sk-cic-")[8:],
        "a revoked API key": revoked,
        "the admin token": admin_token,
        "a wrong admin token": wrong_admin,
        "the Stripe API key": stripe_key,
        "the webhook secret": webhook_secret,
    }
    for what, value in secret_values.items():
        for name, text in logs.items():
            assert value not in text, f"{what} appears in {name}"
