"""A small local fake of the part of Stripe's HTTP API billing uses, for the real ``stripe`` SDK
to talk to through its base address (``STRIPE_API_BASE``).

It records every request it receives (method, path, form fields, idempotency key, and the status
it answered), so tests assert the exact requests Stripe would have received, failures and
duplicates included. Failures are injected per path: ``fail("/v1/billing/meter_events", 429,
500)`` makes the next two requests there answer 429 then 500. Like Stripe, it refuses a meter
event whose identifier it already holds with HTTP 400 "An event already exists with identifier
…", replays a customer creation that repeats an idempotency key, and sums meter events per
customer in ``/v1/billing/meters/{id}/event_summaries``, and opens customer-portal sessions
(``/v1/billing_portal/sessions``) for customers it holds, or refuses them as Stripe does when no
portal configuration is saved (``portal_configured = False``), and lists the invoices a test
gave a customer (``add_invoice``; ``GET /v1/invoices?customer=``, newest first, as Stripe
answers). It also signs webhook deliveries
the way Stripe does (``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

METER_ID = "mtr_test_cic"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    form: dict[str, str]
    idempotency_key: str | None
    status: int


@dataclass
class MeterEvent:
    identifier: str
    customer: str
    value: int
    timestamp: int


@dataclass
class FakeStripe:
    meter_event_name: str = "cic_usage_micro_usd"
    requests: list[Received] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: dict[str, MeterEvent] = field(default_factory=dict)
    portal_sessions: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    # False: portal sessions are refused as in an account whose portal was never configured.
    portal_configured: bool = True
    _failures: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    _replays: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Seconds each meter event takes to answer, and the most requests seen in flight at once,
    # in all and for any one customer (Stripe allows one at a time per customer and meter).
    latency_s: float = 0.0
    max_in_flight: int = 0
    max_in_flight_per_customer: int = 0
    _in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/customers", self._create_customer)
        app.router.add_post("/v1/billing/meter_events", self._create_meter_event)
        app.router.add_post("/v1/billing_portal/sessions", self._create_portal_session)
        app.router.add_get("/v1/billing/meters", self._list_meters)
        app.router.add_get("/v1/invoices", self._list_invoices)
        app.router.add_get("/v1/billing/meters/{id}/event_summaries", self._summaries)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # What tests arrange and read.

    def fail(self, path: str, *statuses: int) -> None:
        """The next requests to ``path`` answer these statuses, in order, and change nothing."""
        self._failures[path].extend(statuses)

    def lose(self, identifier: str) -> None:
        """Forgets a meter event, as if Stripe had never received it."""
        del self.meter_events[identifier]

    def sent(self, path: str = "/v1/billing/meter_events") -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def total(self, customer: str) -> int:
        return sum(e.value for e in self.meter_events.values() if e.customer == customer)

    def customer_of(self, tenant_id: str) -> str:
        (found,) = [
            c["id"] for c in self.customers.values() if c["metadata"]["cic_tenant_id"] == tenant_id
        ]
        return found

    def add_invoice(
        self, customer: str, amount_due: int, amount_paid: int, status: str = "paid"
    ) -> dict[str, Any]:
        """An invoice of the customer (amounts in cents), created now."""
        number = next(self._ids)
        invoice = {
            "id": f"in_fake{number}",
            "object": "invoice",
            "customer": customer,
            "number": f"FAKE-{number:04d}",
            "status": status,
            "amount_due": amount_due,
            "amount_paid": amount_paid,
            "currency": "usd",
            "created": int(time.time()) + number,  # strictly increasing: a stable order
            "hosted_invoice_url": f"https://invoice.stripe.com/i/test_fake{number}",
            "livemode": False,
        }
        self.invoices.append(invoice)
        return invoice

    # The API.

    async def _form(self, request: web.Request) -> dict[str, str]:
        return {k: str(v) for k, v in (await request.post()).items()}

    def _answer(
        self, request: web.Request, form: dict[str, str], status: int, body: dict[str, Any]
    ) -> web.Response:
        self.requests.append(
            Received(
                request.method,
                request.path,
                form,
                request.headers.get("Idempotency-Key"),
                status,
            )
        )
        return web.json_response(body, status=status, headers={"Request-Id": "req_fake"})

    def _injected(
        self, request: web.Request, form: dict[str, str], path: str
    ) -> web.Response | None:
        queue = self._failures.get(path)
        if not queue:
            return None
        status = queue.popleft()
        kind = "rate_limit_error" if status == 429 else "api_error"
        return self._answer(
            request, form, status, {"error": {"type": kind, "message": f"injected {status}"}}
        )

    @staticmethod
    def _invalid(message: str) -> dict[str, Any]:
        return {"error": {"type": "invalid_request_error", "message": message}}

    async def _create_customer(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        injected = self._injected(request, form, request.path)
        if injected is not None:
            return injected
        key = request.headers.get("Idempotency-Key")
        if key and key in self._replays:
            return self._answer(request, form, 200, self._replays[key])
        customer = {
            "id": f"cus_fake{next(self._ids)}",
            "object": "customer",
            "description": form.get("description"),
            "metadata": {
                k.removeprefix("metadata[").removesuffix("]"): v
                for k, v in form.items()
                if k.startswith("metadata[")
            },
            "created": int(time.time()),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        if key:
            self._replays[key] = customer
        return self._answer(request, form, 200, customer)

    async def _create_portal_session(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        injected = self._injected(request, form, request.path)
        if injected is not None:
            return injected
        customer = form.get("customer", "")
        if customer not in self.customers:
            message = f"No such customer: '{customer}'"
            return self._answer(request, form, 400, self._invalid(message))
        if not self.portal_configured:
            message = (
                "No configuration provided and your test mode default configuration has not been"
                " created. Provide a configuration or create your default by saving your customer"
                " portal settings in test mode at https://dashboard.stripe.com/test/settings/billing/portal."
            )
            return self._answer(request, form, 400, self._invalid(message))
        number = next(self._ids)
        session = {
            "id": f"bps_fake{number}",
            "object": "billing_portal.session",
            "configuration": "bpc_fake_default",
            "created": int(time.time()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": form.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_fake{number}",
        }
        self.portal_sessions.append(session)
        return self._answer(request, form, 200, session)

    async def _create_meter_event(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        customer = form.get("payload[stripe_customer_id]", "")
        self._in_flight[customer] += 1
        self.max_in_flight_per_customer = max(
            self.max_in_flight_per_customer, self._in_flight[customer]
        )
        self.max_in_flight = max(self.max_in_flight, sum(self._in_flight.values()))
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return self._meter_event(request, form)
        finally:
            self._in_flight[customer] -= 1

    def _meter_event(self, request: web.Request, form: dict[str, str]) -> web.Response:
        injected = self._injected(request, form, request.path)
        if injected is not None:
            return injected
        identifier = form.get("identifier", "")
        customer = form.get("payload[stripe_customer_id]", "")
        if form.get("event_name") != self.meter_event_name:
            return self._answer(request, form, 400, self._invalid("No active meter found"))
        if customer not in self.customers:
            return self._answer(request, form, 400, self._invalid(f"No such customer: {customer}"))
        if not form.get("payload[value]", "").isdigit():
            return self._answer(request, form, 400, self._invalid("value must be a whole number"))
        if identifier in self.meter_events:
            message = f"An event already exists with identifier {identifier}."
            return self._answer(request, form, 400, self._invalid(message))
        timestamp = int(form.get("timestamp", time.time()))
        if not time.time() - 35 * 86400 <= timestamp <= time.time() + 300:
            return self._answer(request, form, 400, self._invalid("timestamp out of range"))
        event = MeterEvent(identifier, customer, int(form["payload[value]"]), timestamp)
        self.meter_events[identifier] = event
        body = {
            "object": "billing.meter_event",
            "created": int(time.time()),
            "event_name": form["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": {"stripe_customer_id": customer, "value": form["payload[value]"]},
            "timestamp": timestamp,
        }
        return self._answer(request, form, 200, body)

    async def _list_invoices(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        injected = self._injected(request, query, request.path)
        if injected is not None:
            return injected
        customer = query.get("customer", "")
        if customer not in self.customers:
            message = f"No such customer: '{customer}'"
            return self._answer(request, query, 400, self._invalid(message))
        limit = int(query.get("limit", "10"))
        found = sorted(
            (i for i in self.invoices if i["customer"] == customer),
            key=lambda i: i["created"],
            reverse=True,
        )
        body = {
            "object": "list",
            "data": found[:limit],
            "has_more": len(found) > limit,
            "url": "/v1/invoices",
        }
        return self._answer(request, query, 200, body)

    async def _list_meters(self, request: web.Request) -> web.Response:
        meter = {
            "id": METER_ID,
            "object": "billing.meter",
            "event_name": self.meter_event_name,
            "status": "active",
        }
        body = {"object": "list", "data": [meter], "has_more": False, "url": "/v1/billing/meters"}
        return self._answer(request, dict(request.query), 200, body)

    async def _summaries(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        start, end = int(query["start_time"]), int(query["end_time"])
        if start % 60 or end % 60:
            return self._answer(
                request, query, 400, self._invalid("times must be aligned with minute boundaries")
            )
        value = sum(
            e.value
            for e in self.meter_events.values()
            if e.customer == query["customer"] and start <= e.timestamp < end
        )
        summary = {
            "id": f"mtrusg_{start}",
            "object": "billing.meter_event_summary",
            "aggregated_value": float(value),
            "start_time": start,
            "end_time": end,
            "meter": request.match_info["id"],
            "livemode": False,
        }
        body = {"object": "list", "data": [summary], "has_more": False, "url": request.path}
        return self._answer(request, query, 200, body)


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """``Stripe-Signature`` as Stripe sends it with a webhook."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def event_body(event_id: str, event_type: str, customer: str, created: int | None = None) -> bytes:
    """A webhook event as Stripe delivers it (``data.object`` an invoice or subscription)."""
    kind = "subscription" if event_type.startswith("customer.subscription") else "invoice"
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()) if created is None else created,
        "type": event_type,
        "livemode": False,
        "pending_webhooks": 1,
        "data": {"object": {"id": f"{kind[:2]}_fake", "object": kind, "customer": customer}},
    }
    return json.dumps(event).encode()
