"""Browser sessions and CSRF protection.

The session cookie holds 32 random bytes; Postgres keeps only their hash, with the tenant, the
email and the session's CSRF token. Cookies are HttpOnly and SameSite=Lax, and Secure when the
request came over HTTPS (``X-Forwarded-Proto`` counts only with ``DASHBOARD_TRUST_FORWARDED``).

Every form carries a CSRF token: a signed-in form the session's own (kept server-side), a
signed-out form (sign-in) the value of a random ``cic_csrf`` cookie (double submit). A POST
whose ``Origin`` names another site is refused as well.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from cic_gateway.dashboard import store
from cic_gateway.dashboard.store import Session
from cic_gateway.resources import DB, SETTINGS

SESSION_COOKIE = "cic_session"
CSRF_COOKIE = "cic_csrf"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"
SESSION_KEY = web.RequestKey("dashboard_session", Session)
_MAX_COOKIE_CHARS = 100


def is_https(request: web.Request) -> bool:
    if request.transport is not None and request.transport.get_extra_info("sslcontext"):
        return True
    if request.app[SETTINGS].dashboard_trust_forwarded:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def client_address(request: web.Request) -> str:
    """The browser's address: the proxy's last ``X-Forwarded-For`` entry when trusted."""
    if request.app[SETTINGS].dashboard_trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:100]
    return request.remote or "unknown"


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Lax",
        secure=is_https(request),
    )


def _cookie(request: web.Request, name: str) -> str | None:
    value = request.cookies.get(name)
    if not value or len(value) > _MAX_COOKIE_CHARS or not value.isascii():
        return None
    return value


async def current_session(request: web.Request) -> Session | None:
    """The signed-in session (looked up once per request), or None."""
    if SESSION_KEY in request:
        return request[SESSION_KEY]
    session_id = _cookie(request, SESSION_COOKIE)
    if session_id is None:
        return None
    found = await store.find_session(request.app[DB], session_id)
    if found is not None:
        request[SESSION_KEY] = found
    return found


async def start_session(
    request: web.Request, response: web.StreamResponse, tenant_id: str, email: str, method: str
) -> None:
    """Signs the browser in: a new session id (never one the browser brought along); the
    session the browser had before, if any, ends."""
    previous = _cookie(request, SESSION_COOKIE)
    if previous is not None:
        await store.delete_session(request.app[DB], previous)
    session_id = secrets.token_urlsafe(32)
    ttl_s = request.app[SETTINGS].dashboard_session_ttl_s
    await store.create_session(
        request.app[DB], session_id, tenant_id, email, secrets.token_urlsafe(32), method, ttl_s
    )
    set_cookie(request, response, SESSION_COOKIE, session_id, ttl_s)


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    session_id = _cookie(request, SESSION_COOKIE)
    if session_id is not None:
        await store.delete_session(request.app[DB], session_id)
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def signed_out_csrf(request: web.Request, response: web.StreamResponse) -> str:
    """The token for a signed-out form; sets the ``cic_csrf`` cookie when there is none."""
    token = _cookie(request, CSRF_COOKIE)
    if token is None:
        token = secrets.token_urlsafe(24)
        set_cookie(request, response, CSRF_COOKIE, token, 24 * 3600)
    return token


def _same_origin(request: web.Request) -> bool:
    """A browser's word that the form came from another site (``Sec-Fetch-Site``, ``Origin``)
    refuses the POST; a client that sends neither passes on its token alone."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    public = urlsplit(request.app[SETTINGS].dashboard_public_url).netloc
    return urlsplit(origin).netloc in {request.host, public} - {""}


async def check_csrf(request: web.Request, session: Session | None) -> bool:
    """True when the POST's form token is the session's (signed in) or the ``cic_csrf``
    cookie's (signed out) — the one :func:`render` put in the page — and its ``Origin``, if
    sent, is this site."""
    if not _same_origin(request):
        return False
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not sent:
        return False
    expected = session.csrf_token if session is not None else _cookie(request, CSRF_COOKIE)
    return expected is not None and hmac.compare_digest(sent.encode(), expected.encode())
