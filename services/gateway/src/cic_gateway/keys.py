"""Tenant API keys: made here, stored only as a SHA-256 hash with a display prefix, and looked
up through a short-lived in-process cache so that most requests never touch Postgres.

The cache's time-to-live bounds how long a revoked key or a suspended tenant keeps working on
another replica; the replica that revokes drops the key from its own cache at once, and a Redis
pub/sub message makes every other replica do the same (:mod:`cic_gateway.revocation`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from cachetools import TTLCache

from cic_gateway import store
from cic_gateway.errors import SERVER_ERROR, ApiError, invalid_api_key
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.store import KeyAuth

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-cic-"
DISPLAY_PREFIX_CHARS = 12
_MAX_KEY_CHARS = 256
_CACHE_ENTRIES = 100_000
PERMISSION_ERROR = "permission_error"

# Key roles: admin (models and the tenant's keys and usage), developer (models only),
# read-only (usage only).
ADMIN, DEVELOPER, READ_ONLY = "admin", "developer", "read-only"
ROLES = (ADMIN, DEVELOPER, READ_ONLY)


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    prefix: str
    key_hash: bytes


def generate_key() -> NewKey:
    """``sk-cic-`` + 32 random bytes (43 URL-safe characters)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(key=key, prefix=key[:DISPLAY_PREFIX_CHARS], key_hash=hash_key(key))


def hash_key(key: str) -> bytes:
    """Keys are 256-bit random strings, so a fast hash is the right one (no salt or stretching)."""
    return hashlib.sha256(key.encode()).digest()


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


_STORE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class KeyStore:
    """Finds the key a request carries; unknown keys are cached too (as ``None``)."""

    def __init__(
        self, pool: asyncpg.Pool, ttl_s: float, metrics: GatewayMetrics, stale_s: float = 0.0
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._cache: TTLCache[bytes, KeyAuth | None] = TTLCache(
            maxsize=_CACHE_ENTRIES, ttl=ttl_s, timer=time.monotonic
        )
        # The last answer Postgres gave for each key, kept longer: served only while Postgres
        # does not answer (it is forgotten on revocation like the fresh cache).
        self._last_known: TTLCache[bytes, KeyAuth | None] | None = (
            TTLCache(maxsize=_CACHE_ENTRIES, ttl=stale_s, timer=time.monotonic)
            if stale_s > 0
            else None
        )
        self._loading: dict[bytes, asyncio.Task[KeyAuth | None]] = {}

    async def lookup(self, key: str) -> KeyAuth | None:
        digest = hash_key(key)
        try:
            found = self._cache[digest]
        except KeyError:
            self._metrics.key_cache.labels("miss").inc()
            try:
                return await self._load(digest)
            except _STORE_ERRORS:
                if self._last_known is None or digest not in self._last_known:
                    raise
                self._metrics.key_cache.labels("stale").inc()
                return self._last_known[digest]
        self._metrics.key_cache.labels("hit").inc()
        return found

    async def _load(self, digest: bytes) -> KeyAuth | None:
        """One query per key however many requests miss the cache at the same moment; the query
        runs in its own task, so a caller that goes away does not fail the others."""
        task = self._loading.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest))
            self._loading[digest] = task
            task.add_done_callback(lambda done: self._loaded(digest, done))
        return await asyncio.shield(task)

    async def _fetch(self, digest: bytes) -> KeyAuth | None:
        found = await store.find_key(self._pool, digest)
        self._cache[digest] = found
        if self._last_known is not None:
            self._last_known[digest] = found
        return found

    def _loaded(self, digest: bytes, task: asyncio.Task[KeyAuth | None]) -> None:
        self._loading.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaits any more is not logged as lost

    def forget_key(self, key_id: str) -> None:
        """Drops a key from this replica's cache (after a revocation)."""
        self._forget(lambda auth: auth.key_id == key_id)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drops a tenant's keys from this replica's cache (after its status or limits changed)."""
        self._forget(lambda auth: auth.tenant_id == tenant_id)

    def forget_environment(self, environment_id: str) -> None:
        """Drops an environment's keys from this replica's cache (after it changed)."""
        self._forget(lambda auth: auth.environment.id == environment_id)

    def forget_all(self) -> None:
        """Drops every cached key (after this replica may have missed a revocation message)."""
        self._cache.clear()
        if self._last_known is not None:
            self._last_known.clear()

    def _forget(self, matches: Callable[[KeyAuth], bool]) -> None:
        for cache in (self._cache, self._last_known):
            if cache is None:
                continue
            gone = [d for d, auth in list(cache.items()) if auth is not None and matches(auth)]
            for digest in gone:
                cache.pop(digest, None)

    async def authenticate(self, request: web.Request) -> KeyAuth:
        """The request's key, or the 401/403 error OpenAI's clients expect."""
        token = bearer_token(request)
        if token is None:
            raise invalid_api_key(
                "You didn't provide an API key. "
                "Provide it in the Authorization header as 'Bearer <key>'."
            )
        if not token.startswith(KEY_PREFIX) or len(token) > _MAX_KEY_CHARS:
            raise invalid_api_key()
        try:
            auth = await self.lookup(token)
        except _STORE_ERRORS as err:
            log.warning("API key lookup failed: %s", type(err).__name__)
            raise ApiError(
                503,
                "The service is temporarily unavailable; try again shortly.",
                type=SERVER_ERROR,
                code="service_unavailable",
            ) from None
        if auth is None or auth.revoked or _expired(auth):
            raise invalid_api_key()
        if auth.tenant_status != "active":
            raise ApiError(
                403, "This account is suspended.", type=PERMISSION_ERROR, code="tenant_suspended"
            )
        if auth.environment.status != "active":
            raise ApiError(
                403,
                f"The environment '{auth.environment.name}' of this API key is suspended.",
                type=PERMISSION_ERROR,
                code="environment_suspended",
            )
        return auth


def _expired(auth: KeyAuth) -> bool:
    return auth.expires_at is not None and time.time() >= auth.expires_at


def require_role(auth: KeyAuth, *roles: str) -> None:
    """Raises OpenAI's 403 (``permission_error``; ``PermissionDeniedError`` in its SDKs) unless
    ``auth``'s key has one of ``roles``."""
    if auth.role in roles:
        return
    raise ApiError(
        403,
        f"This API key has the role '{auth.role}', which may not make this request"
        f" (it needs one of: {', '.join(roles)}).",
        type=PERMISSION_ERROR,
        code="insufficient_role",
    )


def require_model_allowed(auth: KeyAuth, model: str) -> None:
    """Raises the 403 for a model outside the key's environment's allowed models."""
    allowed = auth.environment.models
    if allowed is None or model in allowed:
        return
    raise ApiError(
        403,
        f"The model '{model}' is not allowed in the environment '{auth.environment.name}'.",
        type=PERMISSION_ERROR,
        code="model_not_allowed",
        param="model",
    )
