"""CORS (aiohttp-cors) for the browser origins in ``CIC_CORS_ORIGINS``.

Every route answers preflight ``OPTIONS`` requests; an origin not in the list gets no CORS
headers (and a refused preflight), so browsers keep other sites out. Requests authenticate
with headers, never cookies, so credentials mode stays off. ``*`` allows every origin.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp_cors
from aiohttp import hdrs, web
from pydantic import BeforeValidator

ANY_ORIGIN = "*"
# Headers a browser client may send: ours, and those the openai SDKs add (JavaScript's included).
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Request-Id",
    "X-Admin-Token",
    "OpenAI-Organization",
    "OpenAI-Project",
    "OpenAI-Beta",
    "Idempotency-Key",
    "X-Stainless-Arch",
    "X-Stainless-Async",
    "X-Stainless-Helper-Method",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Poll-Helper",
    "X-Stainless-Custom-Poll-Interval",
    "X-Stainless-Raw-Response",
    "X-Stainless-Read-Timeout",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Stream-Helper",
    "X-Stainless-Timeout",
)
# Response headers a browser client may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = (
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
PREFLIGHT_MAX_AGE_S = 600
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def _origin(value: str) -> str:
    """``value`` as a browser sends it in ``Origin`` (``scheme://host[:port]``, lower case)."""
    if value == ANY_ORIGIN:
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = None
    if (
        parts is None
        or not _SCHEME.match(parts.scheme)
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"{value!r} is not an origin like https://app.example.com")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def parse_origins(value: object) -> object:
    """A comma-separated string (``CIC_CORS_ORIGINS``) as a tuple of origins."""
    if isinstance(value, str):
        return tuple(_origin(item.strip()) for item in value.split(",") if item.strip())
    return value


CorsOrigins = Annotated[tuple[str, ...], BeforeValidator(parse_origins)]


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS on every route of ``app``: call it once every route is added."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)
    if origins:
        app.on_response_prepare.append(_vary_on_origin)


async def _vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """Answers differ by the caller's origin: a cache must not serve one origin's to another."""
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
