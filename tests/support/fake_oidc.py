"""A small OpenID Connect provider for tests: discovery document, authorization endpoint (it
signs the configured person in at once and redirects back with a code), token endpoint (client
secret, redirect URI and PKCE checked; the id_token is an RS256 JWT signed with a real key) and
JWKS. Each code works once."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class Person:
    email: str
    email_verified: bool = True
    subject: str = field(default_factory=lambda: f"user-{secrets.token_hex(4)}")


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    person: Person


class FakeOidcProvider:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.person = Person("someone@example.com")
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig"})
        self.signing_key = self.key  # tests may swap in a key the JWKS does not hold
        self.issuer_override: str | None = None  # the iss claim, when a test wants a wrong one
        self.token_requests: list[dict[str, str]] = []
        self._grants: dict[str, _Grant] = {}
        self._runner: web.AppRunner | None = None
        self.issuer = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.issuer = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "scopes_supported": ["openid", "email", "profile"],
            }
        )

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id or q.get("response_type") != "code":
            return web.json_response({"error": "invalid_request"}, status=400)
        if "openid" not in q.get("scope", "").split() or q.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request"}, status=400)
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(
            q["client_id"], q["redirect_uri"], q.get("nonce", ""), q["code_challenge"], self.person
        )
        back = {"code": code, "state": q.get("state", "")}
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode(back)}")

    def _client_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        client_id, _, secret = base64.b64decode(value).decode().partition(":")
        return client_id == self.client_id and secret == self.client_secret

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        if not self._client_ok(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self._grants.pop(str(form.get("code", "")), None)
        if grant is None or form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if challenge.rstrip(b"=").decode() != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer_override or self.issuer,
            "sub": grant.person.subject,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            "email": grant.person.email,
            "email_verified": grant.person.email_verified,
        }
        kid = self.signing_key.kid
        id_token = jwt.encode({"alg": "RS256", "kid": kid}, claims, self.signing_key)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})
