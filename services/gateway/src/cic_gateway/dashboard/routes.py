"""The dashboard's routes, templates and OpenID Connect client, added to the gateway's app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web

from cic_gateway.dashboard import pages, signin
from cic_gateway.dashboard.oidc import CALLBACK_PATH, OidcSignIn
from cic_gateway.dashboard.render import TEMPLATES, create_templates
from cic_gateway.resources import REDIS, SETTINGS

PREFIX = "/dashboard"


async def _oidc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The OpenID Connect client, once Redis is open (it keeps each flow's state there)."""
    settings = app[SETTINGS]
    if settings.oidc_issuer:
        app[signin.OIDC] = OidcSignIn(settings, app[REDIS])
    yield


def setup_dashboard(app: web.Application) -> None:
    """The dashboard's routes, templates and OpenID Connect client (after ``redis_ctx``)."""
    app[TEMPLATES] = create_templates()
    app.cleanup_ctx.append(_oidc_ctx)
    static = resources.files("cic_gateway.dashboard").joinpath("static")
    app.router.add_routes(
        [
            web.get(PREFIX, pages.home, allow_head=False),
            web.get(f"{PREFIX}/sign-in", signin.sign_in_page, allow_head=False),
            web.post(f"{PREFIX}/sign-in/email", signin.email_link),
            web.get(f"{PREFIX}/sign-in/link", signin.link_page, allow_head=False),
            web.post(f"{PREFIX}/sign-in/link", signin.spend_link),
            web.post(f"{PREFIX}/sign-in/oidc", signin.oidc_start),
            web.get(CALLBACK_PATH, signin.oidc_callback, allow_head=False),
            web.post(f"{PREFIX}/sign-out", signin.sign_out),
            web.get(f"{PREFIX}/keys", pages.keys_page, allow_head=False),
            web.post(f"{PREFIX}/keys", pages.create_key),
            web.post(f"{PREFIX}/keys/{{key_id}}/revoke", pages.revoke_key),
            web.get(f"{PREFIX}/usage", pages.usage_page, allow_head=False),
            web.get(f"{PREFIX}/account", pages.account_page, allow_head=False),
            web.post(f"{PREFIX}/account/sign-out-everywhere", pages.sign_out_everywhere),
            web.static(f"{PREFIX}/static", str(static), append_version=False),
        ]
    )
