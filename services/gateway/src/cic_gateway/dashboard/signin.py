"""Sign-in: a one-time link by email, or OpenID Connect; sign-out.

A verified email that belongs to a tenant signs in to it. A new email creates a tenant, and with
``DASHBOARD_SIGNUP=invite`` needs one of ``DASHBOARD_INVITE_CODES`` (each good once). Every
attempt counts against the per-email and per-client limits (:mod:`.attempts`).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from typing import Any

from aiohttp import web

from cic_gateway.dashboard import attempts, mailer, store
from cic_gateway.dashboard.oidc import OidcFailed, OidcSignIn
from cic_gateway.dashboard.render import problem, render, secure_headers, see_other
from cic_gateway.dashboard.sessions import (
    check_csrf,
    client_address,
    current_session,
    end_session,
    set_cookie,
    start_session,
)
from cic_gateway.resources import DB, SETTINGS

log = logging.getLogger(__name__)

OIDC = web.AppKey("dashboard_oidc", OidcSignIn)
OIDC_STATE_COOKIE = "cic_oidc_state"
HOME = "/dashboard/usage"
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")
_MAX_FIELD_CHARS = 254


def _field(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value.strip()[:_MAX_FIELD_CHARS] if isinstance(value, str) else ""


def _invite_known(request: web.Request, code: str) -> bool:
    codes = request.app[SETTINGS].dashboard_invite_codes
    return any(hmac.compare_digest(code.encode(), known.encode()) for known in codes)


def _invite_hash_known(request: web.Request, invite_hash: bytes | None) -> bool:
    if invite_hash is None:
        return False
    codes = request.app[SETTINGS].dashboard_invite_codes
    return any(hmac.compare_digest(invite_hash, store.digest(known)) for known in codes)


async def _sign_in_form(
    request: web.Request, status: int = 200, error: str | None = None, email: str = ""
) -> web.Response:
    settings = request.app[SETTINGS]
    return await render(
        request,
        "sign_in.html",
        {
            "error": error,
            "email": email,
            "email_enabled": bool(settings.smtp_host),
            "oidc_enabled": bool(settings.oidc_issuer),
            "oidc_name": settings.oidc_provider_name,
            "invite_only": settings.dashboard_signup == "invite",
        },
        status,
    )


async def _too_many(request: web.Request, wait_s: int) -> web.Response:
    response = await problem(
        request,
        429,
        "Too many sign-in attempts",
        f"Please wait {max(1, wait_s // 60)} minute(s) and try again.",
    )
    response.headers["Retry-After"] = str(wait_s)
    return response


async def sign_in_page(request: web.Request) -> web.Response:
    if await current_session(request) is not None:
        return see_other(request, HOME)
    return await _sign_in_form(request)


async def _refused_csrf(request: web.Request) -> web.Response:
    return await problem(
        request,
        403,
        "This form has expired",
        "Go back, reload the page and send the form again.",
    )


async def email_link(request: web.Request) -> web.Response:
    """Sends a one-time sign-in link to the address given."""
    settings = request.app[SETTINGS]
    if not await check_csrf(request, await current_session(request)):
        return await _refused_csrf(request)
    form = await request.post()
    email, invite = _field(form, "email"), _field(form, "invite_code")
    if not _EMAIL.match(email):
        return await _sign_in_form(request, 400, "Enter a valid email address.", email)
    wait = await attempts.retry_after(request, client_address(request), email)
    if wait:
        return await _too_many(request, wait)
    if not settings.smtp_host:
        return await _sign_in_form(request, 400, "Sign-in by email is not available here.")
    pool = request.app[DB]
    new_tenant = await store.tenant_id_by_email(pool, email) is None
    if new_tenant and settings.dashboard_signup == "invite":
        if (
            not invite
            or not _invite_known(request, invite)
            or await store.invite_spent(pool, invite)
        ):
            return await _sign_in_form(
                request, 400, "New accounts need a valid invite code.", email
            )
    token = secrets.token_urlsafe(32)
    await store.save_link(
        pool, token, email, invite if new_tenant and invite else None, settings.dashboard_link_ttl_s
    )
    link = f"{settings.dashboard_public_url}/dashboard/sign-in/link?token={token}"
    try:
        await mailer.send(settings, mailer.sign_in_message(settings, email, link))
    except mailer.MailNotSent as err:
        log.warning("could not send a sign-in mail: %s", err)
        return await problem(
            request, 503, "We could not send the mail", "Please try again in a few minutes."
        )
    return await render(request, "email_sent.html", {"email": email})


async def link_page(request: web.Request) -> web.Response:
    """The link from the mail shows a button; only the POST spends the link (so that a mail
    scanner that opens links does not)."""
    token = request.query.get("token", "")
    if not token or len(token) > _MAX_FIELD_CHARS:
        return await problem(request, 400, "This sign-in link is not valid", "Ask for a new one.")
    return await render(request, "confirm_link.html", {"token": token})


async def _tenant_for(request: web.Request, email: str, invite_hash: bytes | None) -> str | None:
    """The tenant ``email`` signs in to, made now for a new email when sign-up allows it."""
    pool = request.app[DB]
    tenant_id = await store.tenant_id_by_email(pool, email)
    if tenant_id is not None:
        return tenant_id
    if request.app[SETTINGS].dashboard_signup == "invite" and not _invite_hash_known(
        request, invite_hash
    ):
        return None
    created = await store.create_tenant_for(pool, email, invite_hash)
    if created is not None:
        log.info("dashboard sign-up created tenant %s", created)
    return created


async def _signed_in(request: web.Request, tenant_id: str, email: str, method: str) -> web.Response:
    response = see_other(request, HOME)
    await start_session(request, response, tenant_id, email, method)
    return response


async def spend_link(request: web.Request) -> web.Response:
    if not await check_csrf(request, await current_session(request)):
        return await _refused_csrf(request)
    wait = await attempts.retry_after(request, client_address(request))
    if wait:
        return await _too_many(request, wait)
    token = _field(await request.post(), "token")
    link = await store.spend_link(request.app[DB], token) if token else None
    if link is None:
        return await problem(
            request,
            400,
            "This sign-in link has expired or was used",
            "Links work once and for a short time. Ask for a new one.",
        )
    tenant_id = await _tenant_for(request, link.email, link.invite_hash)
    if tenant_id is None:
        return await problem(
            request, 403, "An invite is needed", "New accounts need a valid, unused invite code."
        )
    return await _signed_in(request, tenant_id, link.email, "email")


async def oidc_start(request: web.Request) -> web.Response:
    if OIDC not in request.app:
        return await problem(request, 404, "Not available", "Single sign-on is not set up here.")
    if not await check_csrf(request, await current_session(request)):
        return await _refused_csrf(request)
    wait = await attempts.retry_after(request, client_address(request))
    if wait:
        return await _too_many(request, wait)
    invite = _field(await request.post(), "invite_code") or None
    try:
        url, state = await request.app[OIDC].start(invite)
    except OidcFailed as err:
        log.warning("OpenID Connect sign-in could not start: %s", err)
        return await problem(request, 503, "Single sign-on is unavailable", "Try again later.")
    response = web.Response(status=303, headers={"Location": url})
    secure_headers(request, response)
    set_cookie(request, response, OIDC_STATE_COOKIE, state, 600)
    return response


async def oidc_callback(request: web.Request) -> web.Response:
    if OIDC not in request.app:
        return await problem(request, 404, "Not available", "Single sign-on is not set up here.")
    state, code = request.query.get("state", ""), request.query.get("code", "")
    cookie = request.cookies.get(OIDC_STATE_COOKIE, "")
    if not state or not code or not hmac.compare_digest(state.encode(), cookie.encode()):
        return await problem(
            request, 400, "Sign-in did not complete", "Start again from the sign-in page."
        )
    try:
        identity, invite = await request.app[OIDC].finish(state, code)
    except OidcFailed as err:
        log.warning("OpenID Connect sign-in refused: %s", err)
        return await problem(
            request, 401, "Sign-in was refused", "Your identity could not be verified."
        )
    invite_hash = store.digest(invite) if invite and _invite_known(request, invite) else None
    tenant_id = await _tenant_for(request, identity.email, invite_hash)
    if tenant_id is None:
        return await problem(
            request, 403, "An invite is needed", "New accounts need a valid, unused invite code."
        )
    response = await _signed_in(request, tenant_id, identity.email, "oidc")
    response.del_cookie(OIDC_STATE_COOKIE, path="/dashboard")
    return response


async def sign_out(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is not None and not await check_csrf(request, session):
        return await _refused_csrf(request)
    response = see_other(request, "/dashboard/sign-in")
    await end_session(request, response)
    return response
