"""The model catalog as the request path sees it: billing's catalog, cached in this process.

No request calls billing: :class:`Catalog` loads the whole catalog (``ListModels``) when the app
starts, reloads it every ``CATALOG_REFRESH_S``, and at once when a message arrives on the Redis
channel ``{prefix}catalog-events``, which the admin API publishes to after every change (so
every replica sees a change within moments; the periodic reload covers a lost message, and a
replica whose subscription broke reloads when it subscribes again).

Each catalog read from billing is also written to Redis (``{prefix}catalog-snapshot``), so that a
replica that starts while billing is down serves the catalog billing last gave (and keeps asking
billing every second until it answers): usage is queued in the outbox meanwhile, as ever.

Cold cache: with neither billing nor a snapshot, a request for any model fails closed with 503
(``catalog_unavailable``): the gateway cannot tell a real model from a made-up one, nor its
type. Once loaded, a failed reload keeps serving the catalog loaded last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
import orjson
from redis.exceptions import RedisError

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic_common.periodic import cancel_and_wait
from cic_gateway import pubsub
from cic_gateway.errors import SERVER_ERROR, ApiError

log = logging.getLogger(__name__)

CHANNEL = "catalog-events"
SNAPSHOT = "catalog-snapshot"
PUBLISH_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 2.0
_RETRY_COLD_S = 1.0

TYPE_NAMES = {
    billing_pb2.MODEL_TYPE_CHAT: "chat",
    billing_pb2.MODEL_TYPE_COMPLETION: "completion",
    billing_pb2.MODEL_TYPE_EMBEDDING: "embedding",
}
# The types each tenant route serves: a chat model answers raw completions too (vLLM serves
# /v1/completions for chat models), an embedding model only embeddings.
ROUTE_TYPES = {
    "/v1/chat/completions": frozenset({"chat"}),
    "/v1/completions": frozenset({"chat", "completion"}),
    "/v1/embeddings": frozenset({"embedding"}),
}
_ROUTE_FOR_TYPE = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    type: str
    context_length: int
    created: int  # seconds since the epoch


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def catalog_unavailable() -> ApiError:
    return ApiError(
        503,
        "The model catalog is not available yet; try again shortly.",
        type=SERVER_ERROR,
        code="catalog_unavailable",
    )


class Catalog:
    """This replica's copy of the catalog, kept fresh in the background."""

    def __init__(
        self,
        billing: billing_pb2_grpc.BillingServiceStub,
        redis_url: str,
        prefix: str,
        refresh_s: float,
        rpc_timeout_s: float,
    ) -> None:
        self.channel = f"{prefix}{CHANNEL}"
        self.snapshot_key = f"{prefix}{SNAPSHOT}"
        self.from_billing = False  # the catalog held came from billing (not from the snapshot)
        self._billing = billing
        self._refresh_s = refresh_s
        self._rpc_timeout_s = rpc_timeout_s
        self._models: dict[str, CatalogEntry] | None = None
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()
        self._attempted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher = pubsub.publisher(redis_url)
        self._subscriber = pubsub.subscriber(redis_url)
        self.subscribed = asyncio.Event()
        self.reloads = 0  # completed reloads, for tests and logs

    async def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Starts loading and listening; returns after the first attempt to load, or after
        ``ready_timeout_s`` (the loader keeps trying)."""
        self._tasks = [
            asyncio.create_task(self._reload_loop(), name="catalog-reload"),
            asyncio.create_task(self._listen_loop(), name="catalog-listen"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_timeout_s):
                await self._attempted.wait()

    async def close(self) -> None:
        await asyncio.gather(*(cancel_and_wait(task) for task in self._tasks))
        self._tasks = []
        await self._subscriber.aclose()
        await self._publisher.aclose()

    @property
    def loaded(self) -> bool:
        return self._models is not None

    def get(self, model: str) -> CatalogEntry | None:
        """The model's entry, or None; :func:`catalog_unavailable` while never loaded."""
        if self._models is None:
            raise catalog_unavailable()
        return self._models.get(model)

    def require(self, model: str, route: str | None = None) -> CatalogEntry:
        """The model's entry, or the client's error: 404 for a model not in the catalog, 400 for
        one whose type ``route`` does not serve, 503 while the catalog was never loaded."""
        entry = self.get(model)
        if entry is None:
            raise model_not_found(model)
        if route is not None and entry.type not in ROUTE_TYPES.get(route, frozenset()):
            raise ApiError(
                400,
                f"The model `{model}` is {_article(entry.type)} {entry.type} model and is not"
                f" served on {route}; use {_ROUTE_FOR_TYPE[entry.type]}.",
                code="unsupported_model_type",
                param="model",
            )
        return entry

    async def changed(self) -> None:
        """After an admin change: reload here now and tell every other replica."""
        self._wake.set()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._publisher.publish(self.channel, b"{}")
        except (RedisError, OSError, TimeoutError) as err:
            log.warning(
                "could not tell other replicas of a catalog change (%s); they reload within %ss",
                type(err).__name__,
                self._refresh_s,
            )

    async def reload(self) -> None:
        """Reads the whole catalog from billing and makes it current; raises on failure."""
        reply = await self._billing.ListModels(
            billing_pb2.ListModelsRequest(), timeout=self._rpc_timeout_s
        )
        self._models = {
            m.name: CatalogEntry(
                name=m.name,
                type=TYPE_NAMES.get(m.type, "chat"),
                context_length=m.context_length,
                created=m.created_at.seconds,
            )
            for m in reply.models
        }
        self.from_billing = True
        self.reloads += 1
        self._loaded.set()
        await self._save_snapshot(self._models)

    async def _save_snapshot(self, models: dict[str, CatalogEntry]) -> None:
        rows = [[e.name, e.type, e.context_length, e.created] for e in models.values()]
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._publisher.set(self.snapshot_key, orjson.dumps(rows))
        except (RedisError, OSError, TimeoutError) as err:
            log.debug("catalog snapshot not written to Redis: %s", type(err).__name__)

    async def _load_snapshot(self) -> None:
        """The catalog billing last gave any replica, from Redis (nothing if there is none)."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                raw = await self._publisher.get(self.snapshot_key)
            rows = orjson.loads(raw) if raw is not None else None
            models = {
                str(name): CatalogEntry(str(name), str(kind), int(length), int(created))
                for name, kind, length, created in rows or ()
            }
        except (RedisError, OSError, TimeoutError, orjson.JSONDecodeError, TypeError, ValueError):
            return
        if rows is not None and self._models is None:
            self._models = models
            self._loaded.set()
            log.warning("billing is unavailable: serving the model catalog it last gave (Redis)")

    async def _reload_loop(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            try:
                await self.reload()
                if failing:
                    log.info("model catalog loaded from billing again")
                failing = False
            except Exception as err:  # any failure: a loop that ended would never reload again
                rpc = err if isinstance(err, grpc.aio.AioRpcError) else None
                if not failing:
                    log.warning(
                        "could not load the model catalog from billing (%s); %s",
                        type(err).__name__ if rpc is None else rpc.code().name,
                        "keeping the one loaded last" if self.loaded else "retrying",
                        exc_info=rpc is None,  # not billing's answer: a bug, with its traceback
                    )
                failing = True
                if self._models is None:
                    await self._load_snapshot()
            self._attempted.set()
            wait_s = self._refresh_s if self.from_billing else _RETRY_COLD_S
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # meets the event being set, and close() would wait for this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def _listen_loop(self) -> None:
        await pubsub.listen_forever(
            self._subscriber,
            self.channel,
            on_message=lambda _: self._wake.set(),
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
        )

    def _on_subscribed(self) -> None:
        self._wake.set()  # a change may have been missed while not subscribed
        self.subscribed.set()

    def _on_lost(self, err: BaseException) -> None:
        if self.subscribed.is_set():
            log.warning(
                "catalog channel lost (%s); reloading every %ss meanwhile",
                type(err).__name__,
                self._refresh_s,
            )
        self.subscribed.clear()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
