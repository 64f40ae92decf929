"""Sign-in by OpenID Connect (``OIDC_ISSUER``, ``OIDC_CLIENT_ID``, ``OIDC_CLIENT_SECRET``), with
authlib: discovery, the authorization-code flow with PKCE and a nonce, and the id_token checked
against the provider's JWKS (signature, issuer, audience, expiry, nonce).

The flow's secrets (state, nonce, PKCE verifier) wait in Redis for ten minutes, keyed by a hash of
the state; the state also goes into a cookie, so the callback must come back to the browser that
started it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from authlib.integrations.base_client import BaseApp, FrameworkIntegration, OAuthError
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from redis.asyncio import Redis

from cic_gateway.config import GatewaySettings

log = logging.getLogger(__name__)

STATE_TTL_S = 600
CALLBACK_PATH = "/dashboard/sign-in/oidc/callback"
_HTTP_TIMEOUT_S = 10.0


class OidcFailed(Exception):
    """The provider refused, answered badly, or its id_token did not check out."""


class _OidcApp(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):
    """authlib's async OpenID Connect client (as its Starlette integration builds it, without
    Starlette)."""

    client_cls = AsyncOAuth2Client


@dataclass(frozen=True, slots=True)
class Identity:
    email: str
    subject: str


class OidcSignIn:
    def __init__(self, settings: GatewaySettings, redis: Redis) -> None:
        self.issuer = settings.oidc_issuer
        self.redirect_uri = settings.dashboard_public_url + CALLBACK_PATH
        self._redis = redis
        self._prefix = f"{settings.redis_key_prefix}dashboard:oidc:"
        self._app = _OidcApp(
            framework=FrameworkIntegration("oidc"),
            name="oidc",
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value() or None,
            server_metadata_url=f"{self.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": "openid email profile",
                "code_challenge_method": "S256",
                "timeout": _HTTP_TIMEOUT_S,
            },
        )

    def _key(self, state: str) -> str:
        return self._prefix + hashlib.sha256(state.encode()).hexdigest()

    async def _metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = await self._app.load_server_metadata()
        if metadata.get("issuer", "").rstrip("/") != self.issuer:
            raise OidcFailed("the discovery document names another issuer")
        return metadata

    async def start(self, invite: str | None) -> tuple[str, str]:
        """The provider's authorization URL and the state to keep in the browser's cookie."""
        try:
            await self._metadata()
            begun = await self._app.create_authorization_url(self.redirect_uri)
        except (OAuthError, OSError, ValueError, RuntimeError) as err:
            raise OidcFailed(f"discovery failed ({type(err).__name__})") from None
        flow = {"nonce": begun["nonce"], "verifier": begun["code_verifier"], "invite": invite}
        await self._redis.set(self._key(begun["state"]), orjson.dumps(flow), ex=STATE_TTL_S)
        return begun["url"], begun["state"]

    async def finish(self, state: str, code: str) -> tuple[Identity, str | None]:
        """The verified identity and the invite code given at the start; the state works once."""
        raw = await self._redis.getdel(self._key(state))
        if raw is None:
            raise OidcFailed("unknown or expired state")
        flow = orjson.loads(raw)
        try:
            await self._metadata()
            token = await self._app.fetch_access_token(
                redirect_uri=self.redirect_uri, code=code, code_verifier=flow["verifier"]
            )
            claims = await self._app.parse_id_token(token, nonce=flow["nonce"], leeway=60)
        except Exception as err:  # authlib and joserfc raise many types; none may reach the user
            log.warning("OpenID Connect sign-in failed: %s", type(err).__name__)
            raise OidcFailed(type(err).__name__) from None
        if claims is None:
            raise OidcFailed("no id_token")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise OidcFailed("the id_token has no email")
        if claims.get("email_verified") is not True:
            raise OidcFailed("the provider has not verified the email")
        return Identity(email=email.strip(), subject=str(claims.get("sub", ""))), flow["invite"]
