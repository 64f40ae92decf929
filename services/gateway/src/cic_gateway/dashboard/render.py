"""HTML answers: Jinja2 templates (autoescaped) with the headers every dashboard page carries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from cic_gateway.dashboard.sessions import CSRF_FIELD, current_session, signed_out_csrf
from cic_gateway.resources import SETTINGS

TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)


def create_templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cic_gateway.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# Browsers check form-action on the redirects that follow a form too: the "Manage billing" form
# ends on Stripe's customer portal.
STRIPE_PORTAL_ORIGIN = "https://billing.stripe.com"


def _content_security_policy(request: web.Request) -> str:
    issuer = request.app[SETTINGS].oidc_issuer
    provider = ""
    if issuer:
        parts = urlsplit(issuer)
        provider = f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        f"form-action 'self'{provider} {STRIPE_PORTAL_ORIGIN}; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = _content_security_policy(request)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Sign-in links carry a token: no Referer leaves the site. (With no-referrer browsers would
    # send "Origin: null" on the site's own forms, which the CSRF check refuses.)
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


async def render(
    request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    """The page, with the form token of the session (signed in) or of the ``cic_csrf`` cookie."""
    response = web.Response(status=status, content_type="text/html", charset="utf-8")
    session = await current_session(request)
    csrf = session.csrf_token if session is not None else signed_out_csrf(request, response)
    page = request.app[TEMPLATES].get_template(template)
    response.text = page.render(
        {
            "session": session,
            "active": "",
            "csrf_field": CSRF_FIELD,
            "csrf_token": csrf,
            **(context or {}),
        }
    )
    secure_headers(request, response)
    return response


async def problem(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return await render(request, "problem.html", {"title": title, "detail": detail}, status)


def unavailable(request: web.Request) -> web.Response:
    """A 503 page made without Postgres or Redis (for when one of them is down)."""
    page = request.app[TEMPLATES].get_template("problem.html")
    response = web.Response(status=503, content_type="text/html", charset="utf-8")
    response.text = page.render(
        session=None,
        active="",
        csrf_field=CSRF_FIELD,
        csrf_token="",
        title="The dashboard is unavailable",
        detail="Something it needs is down for a moment; try again in a minute.",
    )
    response.headers["Retry-After"] = "30"
    secure_headers(request, response)
    return response


def redirect_to(request: web.Request, url: str) -> web.Response:
    """A 303 to ``url`` on another site (checked by the caller), e.g. Stripe's portal."""
    response = web.Response(status=303, headers={"Location": url})
    secure_headers(request, response)
    return response


def see_other(request: web.Request, location: str) -> web.Response:
    """A 303 to ``location`` (a path of this site) after a form, as a plain answer: the gateway's
    error middleware must not turn it into JSON."""
    response = web.Response(status=303, headers={"Location": location})
    secure_headers(request, response)
    return response
