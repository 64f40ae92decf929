"""The dashboard's routes, templates and OpenID Connect client, added to the gateway's app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

from aiohttp import web

from cic_gateway.dashboard import pages, signin
from cic_gateway.dashboard.oidc import CALLBACK_PATH, OidcSignIn
from cic_gateway.dashboard.render import TEMPLATES, create_templates, unavailable
from cic_gateway.errors import DEPENDENCY_ERRORS
from cic_gateway.resources import REDIS, SETTINGS

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/dashboard"


async def _oidc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The OpenID Connect client, once Redis is open (it keeps each flow's state there)."""
    settings = app[SETTINGS]
    if settings.oidc_issuer:
        app[signin.OIDC] = OidcSignIn(settings, app[REDIS])
    yield


def _html_errors(handler: Handler) -> Handler:
    """Postgres or Redis down: a page that says so (the gateway's own answer would be JSON)."""

    async def page(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DEPENDENCY_ERRORS as err:
            log.warning(
                "dashboard %s: a dependency is unavailable (%s)", request.path, type(err).__name__
            )
            return unavailable(request)

    return page


def setup_dashboard(app: web.Application) -> None:
    """The dashboard's routes, templates and OpenID Connect client (after ``redis_ctx``)."""
    app[TEMPLATES] = create_templates()
    app.cleanup_ctx.append(_oidc_ctx)
    static = resources.files("cic_gateway.dashboard").joinpath("static")
    app.router.add_routes(
        [
            web.get(PREFIX, _html_errors(pages.home), allow_head=False),
            web.get(f"{PREFIX}/sign-in", _html_errors(signin.sign_in_page), allow_head=False),
            web.post(f"{PREFIX}/sign-in/email", _html_errors(signin.email_link)),
            web.get(f"{PREFIX}/sign-in/link", _html_errors(signin.link_page), allow_head=False),
            web.post(f"{PREFIX}/sign-in/link", _html_errors(signin.spend_link)),
            web.post(f"{PREFIX}/sign-in/oidc", _html_errors(signin.oidc_start)),
            web.get(CALLBACK_PATH, _html_errors(signin.oidc_callback), allow_head=False),
            web.post(f"{PREFIX}/sign-out", _html_errors(signin.sign_out)),
            web.get(f"{PREFIX}/keys", _html_errors(pages.keys_page), allow_head=False),
            web.post(f"{PREFIX}/keys", _html_errors(pages.create_key)),
            web.post(f"{PREFIX}/keys/{{key_id}}/revoke", _html_errors(pages.revoke_key)),
            web.get(f"{PREFIX}/usage", _html_errors(pages.usage_page), allow_head=False),
            web.post(f"{PREFIX}/billing/portal", _html_errors(pages.billing_portal)),
            web.get(f"{PREFIX}/account", _html_errors(pages.account_page), allow_head=False),
            web.post(
                f"{PREFIX}/account/sign-out-everywhere", _html_errors(pages.sign_out_everywhere)
            ),
            web.static(f"{PREFIX}/static", str(static), append_version=False),
        ]
    )
