"""The signed-in pages: API keys, usage and billing, account. Every query is scoped by the tenant
of the session; an id from the URL or a form is looked up within that tenant only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web

from cic_gateway import store
from cic_gateway.dashboard import billing_view, usage_view
from cic_gateway.dashboard import store as dashboard_store
from cic_gateway.dashboard.render import problem, redirect_to, render, see_other, unavailable
from cic_gateway.dashboard.sessions import check_csrf, current_session
from cic_gateway.dashboard.store import Session
from cic_gateway.keys import generate_key
from cic_gateway.resources import DB, KEYS, REVOCATIONS, SERVICES, SETTINGS

log = logging.getLogger(__name__)

SIGN_IN = "/dashboard/sign-in"
USAGE = "/dashboard/usage"
_MAX_NAME_CHARS = 200
_MAX_LIMIT = 1_000_000_000

Page = Callable[[web.Request, Session], Awaitable[web.Response]]
T = TypeVar("T")


def signed_in(page: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Runs ``page`` with the session; signed out, a redirect to sign-in. A POST must also carry
    the session's CSRF token."""

    async def handler(request: web.Request) -> web.Response:
        session = await current_session(request)
        if session is None:
            return see_other(request, SIGN_IN)
        if request.method == "POST" and not await check_csrf(request, session):
            return await problem(
                request, 403, "This form has expired", "Reload the page and send it again."
            )
        return await page(request, session)

    handler.__name__ = page.__name__
    return handler


async def home(request: web.Request) -> web.Response:
    return see_other(request, USAGE if await current_session(request) else SIGN_IN)


async def _tenant(request: web.Request, session: Session) -> dict[str, Any]:
    tenant = await store.get_tenant(request.app[DB], session.tenant_id)
    if tenant is None:  # deleted while signed in: the session went with it (ON DELETE CASCADE)
        raise web.HTTPSeeOther(SIGN_IN)
    return tenant


async def _keys_page(
    request: web.Request,
    session: Session,
    status: int = 200,
    **extra: Any,
) -> web.Response:
    keys = await store.list_keys(request.app[DB], session.tenant_id)
    context = {
        "tenant": await _tenant(request, session),
        "keys": keys,
        "active": "keys",
        "base_url": f"{request.app[SETTINGS].dashboard_public_url or request.url.origin()}/v1",
        "new_key": None,
        "error": None,
        "form": {},
        **extra,
    }
    return await render(request, "keys.html", context, status)


@signed_in
async def keys_page(request: web.Request, session: Session) -> web.Response:
    return await _keys_page(request, session)


def _text(value: object) -> str:
    return value[: _MAX_NAME_CHARS * 2] if isinstance(value, str) else ""


def _limit(raw: str, label: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise ValueError(f"{label} must be a whole number from 1 to {_MAX_LIMIT:,}, or empty.")
    return int(raw)


@signed_in
async def create_key(request: web.Request, session: Session) -> web.Response:
    """Creates a key as the admin API does (``generate_key`` and ``store.create_key``) and shows
    its secret on this answer only."""
    form = await request.post()
    fields = {k: _text(form.get(k)) for k in ("name", "rpm", "tpm")}
    name = fields["name"].strip()
    try:
        if not 1 <= len(name) <= _MAX_NAME_CHARS:
            raise ValueError(f"Give the key a name of 1 to {_MAX_NAME_CHARS} characters.")
        rpm = _limit(fields["rpm"], "Requests per minute")
        tpm = _limit(fields["tpm"], "Tokens per minute")
    except ValueError as err:
        return await _keys_page(request, session, 400, error=str(err), form=fields)
    new = generate_key()
    row = await store.create_key(
        request.app[DB], session.tenant_id, name, new.prefix, new.key_hash, rpm, tpm
    )
    log.info("dashboard: tenant %s created key %s", session.tenant_id, row["id"])
    return await _keys_page(request, session, 201, new_key={"secret": new.key, **row})


@signed_in
async def revoke_key(request: web.Request, session: Session) -> web.Response:
    key_id = request.match_info["key_id"]
    pool = request.app[DB]
    if await dashboard_store.tenant_key(pool, session.tenant_id, key_id) is None:
        return await problem(request, 404, "No such key", "This account has no key with that id.")
    await store.revoke_key(pool, key_id)
    request.app[KEYS].forget_key(key_id)
    await request.app[REVOCATIONS].key_revoked(key_id)  # every other replica too
    log.info("dashboard: tenant %s revoked key %s", session.tenant_id, key_id)
    return see_other(request, "/dashboard/keys")


def _choice(request: web.Request, name: str, allowed: list[str], default: str) -> str:
    value = request.query.get(name, default)
    return value if value in allowed else default


async def _or_none(what: str, call: Awaitable[T]) -> T | None:
    """``call``'s answer, or None when billing cannot give it (the page says so)."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        log.warning("dashboard %s: billing answered %s", what, err.code().name)
        return None


@signed_in
async def usage_page(request: web.Request, session: Session) -> web.Response:
    days = int(_choice(request, "days", [str(d) for d in usage_view.RANGES], "30"))
    metric = _choice(request, "metric", list(usage_view.METRICS), "cost")
    timeout_s = request.app[SETTINGS].grpc_timeout_s
    billing = request.app[SERVICES].billing
    tenant = await _tenant(request, session)
    usage, account, month = await asyncio.gather(
        _or_none("usage", usage_view.fetch(billing, session.tenant_id, days, timeout_s)),
        _or_none("billing account", billing_view.fetch(billing, session.tenant_id, timeout_s)),
        _or_none("spend", billing_view.fetch_money(billing, session.tenant_id, timeout_s)),
    )
    context = {
        "active": "usage",
        "tenant": tenant,
        "usage": usage,
        "days": days,
        "ranges": usage_view.RANGES,
        "metric": metric,
        "metrics": usage_view.METRICS,
        "charts": [
            ("wide", usage_view.chart(usage.days, metric, usage_view.WIDE)),
            ("narrow", usage_view.chart(usage.days, metric, usage_view.NARROW)),
        ]
        if usage
        else [],
        "account": account,
        "month": month,
    }
    return await render(request, "usage.html", context, 200 if usage else 503)


@signed_in
async def billing_portal(request: web.Request, session: Session) -> web.Response:
    """Sends the tenant of the session (never one named in the form) to a new Stripe
    customer-portal session, which sends it back to the usage page."""
    settings = request.app[SETTINGS]
    return_url = f"{settings.dashboard_public_url or request.url.origin()}{USAGE}"
    try:
        url = await billing_view.portal_url(
            request.app[SERVICES].billing, session.tenant_id, return_url, settings.grpc_timeout_s
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
            log.warning(
                "dashboard: no billing portal for tenant %s: %s", session.tenant_id, err.details()
            )
            return await problem(
                request,
                409,
                "The billing portal is not available",
                "Billing here is not managed through Stripe's customer portal; contact your"
                " operator about your bill.",
            )
        log.warning("dashboard billing portal: billing answered %s", err.code().name)
        return unavailable(request)
    except billing_view.BadPortalUrl as err:
        log.error("dashboard billing portal: billing answered a bad URL %r", str(err))
        return unavailable(request)
    log.info("dashboard: tenant %s sent to the billing portal", session.tenant_id)
    return redirect_to(request, url)


@signed_in
async def account_page(request: web.Request, session: Session) -> web.Response:
    tenant = await _tenant(request, session)
    return await render(request, "account.html", {"active": "account", "tenant": tenant})


@signed_in
async def sign_out_everywhere(request: web.Request, session: Session) -> web.Response:
    await dashboard_store.delete_sessions_of(request.app[DB], session.tenant_id, session.email)
    response = see_other(request, SIGN_IN)
    response.del_cookie("cic_session", path="/dashboard")
    return response
