"""The scheduler as the gateway sees it: take a lease on a node for a model, give it back."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_gateway.errors import SERVER_ERROR, ApiError

log = logging.getLogger(__name__)

Outcome = scheduler_pb2.Outcome

# How much of the prompt the prefix key covers: requests whose first PREFIX_KEY_CHARS characters
# (system prompt and start of the conversation) agree share a key, so the scheduler's prefix
# affinity sends them to the node whose prefix cache already holds that start.
PREFIX_KEY_CHARS = 512


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    node_id: str
    model: str
    endpoint: str
    region: str = ""  # the node's `region` label (empty: none)


def no_node(model: str) -> ApiError:
    return ApiError(
        503,
        f"No node is ready to serve model '{model}' right now; try again shortly.",
        type=SERVER_ERROR,
        code="no_ready_node",
    )


def _text_of(content: Any) -> str:
    """A message's content as text: a string, or its parts' text (other parts by their type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                texts.append(text if isinstance(text, str) else f"<{part.get('type')}>")
        return "\n".join(texts)
    return ""


def _prompt_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"{m.get('role')}\x1f{_text_of(m.get('content'))}\x1e"
            for m in messages
            if isinstance(m, Mapping)
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]  # a batch of prompts: routed by its first
    if isinstance(prompt, list):  # token ids
        return " ".join(str(token) for token in prompt)
    return prompt if isinstance(prompt, str) else ""


def prefix_key(body: Mapping[str, Any], chars: int = PREFIX_KEY_CHARS) -> str:
    """A short stable hash (16 hex digits) of the first ``chars`` characters of the request's
    prompt (chat messages with their roles, or the completion prompt); empty when there is none.

    A request's ``cache_salt`` goes into the hash: vLLM shares no prefix cache across salts."""
    text = _prompt_text(body)[:chars]
    if not text:
        return ""
    salt = body.get("cache_salt")
    digest = hashlib.blake2b(digest_size=8)
    digest.update(salt.encode() if isinstance(salt, str) else b"")
    digest.update(b"\x00")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
# After a Route stream breaks, picks go as single calls for this long before a new stream is
# tried, so a scheduler that is down is not asked for a stream per request.
ROUTE_RETRY_AFTER_S = 1.0


# A release waits up to this long for a pick to leave with: one message (and one round trip to
# Redis on the scheduler) for both instead of one each. A busy gateway's releases always find one
# at once; an idle one's reach the scheduler this much later.
RELEASE_RIDE_S = 0.005

# Releases the scheduler could not take wait for it this long at first, doubling up to the max.
RELEASE_RETRY_FIRST_S = 0.2
RELEASE_RETRY_MAX_S = 5.0
MAX_QUEUED_RELEASES = 100_000
_RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _StreamBroken(Exception):
    """The Route stream ended before this pick was answered."""


class RouteStream:
    """One ``Route`` call to the scheduler, shared by every request of this gateway.

    Picks made while a message is being written leave together in the next one, and the
    scheduler answers the picks that reach it together in one message, so a busy gateway sends
    a message per batch of requests rather than a call per request. Releases ride the same
    stream, unanswered, with the next pick (or alone after ``RELEASE_RIDE_S``)."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
        self._call = stub.Route()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[scheduler_pb2.RoutePicked]] = {}
        self._abandoned: dict[int, str] = {}  # pick id -> model, for picks that timed out
        self._picks: list[scheduler_pb2.RoutePick] = []
        self._releases: list[scheduler_pb2.ReleaseNodeRequest] = []
        self._wake = asyncio.Event()
        self._release_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.broken_at: float | None = None
        self.error: grpc.StatusCode | None = None
        # Releases made but not yet written when the stream broke: the caller sends them.
        self.unsent_releases: list[scheduler_pb2.ReleaseNodeRequest] = []
        self._writer = asyncio.create_task(self._write_loop())
        self._reader = asyncio.create_task(self._read_loop())

    @property
    def broken(self) -> bool:
        return self.broken_at is not None

    async def pick(
        self, request: scheduler_pb2.PickNodeRequest, timeout_s: float
    ) -> scheduler_pb2.RoutePicked:
        """The scheduler's answer; raises ``TimeoutError`` or ``_StreamBroken``."""
        if self.broken:
            raise _StreamBroken()
        pick_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[pick_id] = answer
        self._picks.append(scheduler_pb2.RoutePick(id=pick_id, request=request))
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await answer
        except (TimeoutError, asyncio.CancelledError):
            if self._waiting.pop(pick_id, None) is not None:
                self._abandoned[pick_id] = request.model  # its lease goes back on arrival
            raise

    def release(self, release: scheduler_pb2.ReleaseNodeRequest) -> bool:
        """Queues a release on the stream; False when the stream is broken."""
        if self.broken:
            return False
        self._releases.append(release)
        if self._release_timer is None:
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(RELEASE_RIDE_S, self._wake.set)
        return True

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._picks or self._releases:
                    self._stop_release_timer()
                    message = scheduler_pb2.RouteRequest(picks=self._picks, releases=self._releases)
                    self._picks, self._releases = [], []
                    await self._call.write(message)
                if self._closing:
                    await self._call.done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the call ended: its reader says why
            self._break(err)

    def _stop_release_timer(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None

    async def _read_loop(self) -> None:
        try:
            async for response in self._call:
                for answer in response.picks:
                    self._answered(answer)
            self._break(None)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._break(err)

    def _answered(self, answer: scheduler_pb2.RoutePicked) -> None:
        waiter = self._waiting.pop(answer.id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(answer)
            return
        self._abandoned.pop(answer.id, None)
        if answer.HasField("picked"):  # its request gave up waiting: the lease goes back
            self.release(
                scheduler_pb2.ReleaseNodeRequest(
                    lease_id=answer.picked.lease_id, outcome=Outcome.OUTCOME_CLIENT_ERROR
                )
            )

    def _break(self, err: BaseException | None) -> None:
        if self.broken:
            return
        self.broken_at = time.monotonic()
        if isinstance(err, grpc.aio.AioRpcError):
            self.error = err.code()
        if not self._closing:
            log.warning("the Route stream to the scheduler ended: %s", describe(err))
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(_StreamBroken())
        self._stop_release_timer()
        self.unsent_releases, self._releases = self._releases, []
        self._picks = []
        self._call.cancel()

    async def close(self, timeout_s: float) -> None:
        """Sends what is queued, ends the stream and waits (up to ``timeout_s``) for the
        scheduler to end it too."""
        self._closing = True
        self._wake.set()
        await asyncio.wait({self._writer, self._reader}, timeout=timeout_s)
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
        self._break(None)


def describe(err: BaseException | None) -> str:
    if err is None:
        return "closed by the scheduler"
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name} {err.details()}"
    return repr(err)


def _lease(model: str, reply: scheduler_pb2.PickNodeResponse) -> Lease:
    node = reply.node
    return Lease(
        lease_id=reply.lease_id,
        node_id=node.id,
        model=model,
        endpoint=node.endpoint.rstrip("/"),
        region=node.labels.get("region", ""),
    )


def _refused(model: str, code: grpc.StatusCode, details: str) -> ApiError:
    """The client's error for a pick the scheduler refused (or could not answer)."""
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError(
            404, f"The model '{model}' does not exist.", code="model_not_found", param="model"
        )
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.warning("PickNode(%s) failed: %s %s", model, code.name, details)
    return no_node(model)


class SchedulerClient:
    def __init__(
        self,
        stub: scheduler_pb2_grpc.SchedulerServiceStub,
        pick_timeout_s: float = 2.0,
        release_timeout_s: float = 2.0,
        *,
        route_stream: bool = True,
    ) -> None:
        self._stub = stub
        self._pick_timeout_s = pick_timeout_s
        self._release_timeout_s = release_timeout_s
        self._pending: list[scheduler_pb2.ReleaseNodeRequest] = []
        self._sender: asyncio.Task[None] | None = None
        self._use_route = route_stream
        self._route: RouteStream | None = None

    def _stream(self) -> RouteStream | None:
        """The Route stream to use, opened when needed; None while picks go as single calls."""
        route = self._route
        if route is not None and not route.broken:
            return route
        if not self._use_route:
            return None
        if route is not None:
            for release in route.unsent_releases:
                self._queue_release(release)
            route.unsent_releases = []
            if route.error == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("the scheduler has no Route stream; picking with single calls")
                self._use_route = False
                return None
            assert route.broken_at is not None
            if time.monotonic() - route.broken_at < ROUTE_RETRY_AFTER_S:
                return None
        self._route = RouteStream(self._stub)
        return self._route

    async def pick(
        self,
        model: str,
        exclude_node_ids: tuple[str, ...] = (),
        prefix_key: str = "",
        region: str = "",
    ) -> Lease:
        """A lease on a ready node for ``model``; 404 for a model no node serves, else 503.
        ``prefix_key`` (see :func:`prefix_key`) lets the scheduler keep a prompt prefix on one
        node; ``region`` is the caller's preferred region (empty: none). Picks go on the Route
        stream, or as single calls while it is down."""
        request = scheduler_pb2.PickNodeRequest(
            model=model,
            exclude_node_ids=list(exclude_node_ids),
            prefix_key=prefix_key,
            region=region,
        )
        route = self._stream()
        if route is not None:
            try:
                answer = await route.pick(request, self._pick_timeout_s)
            except TimeoutError:
                raise no_node(model) from None
            except _StreamBroken:
                pass  # asked again below, as a single call
            else:
                if answer.HasField("picked"):
                    return _lease(model, answer.picked)
                code = _STATUS_BY_VALUE.get(answer.error_code, grpc.StatusCode.UNKNOWN)
                raise _refused(model, code, answer.error_message)
        try:
            reply = await self._stub.PickNode(request, timeout=self._pick_timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _refused(model, err.code(), err.details()) from None
        return _lease(model, reply)

    def release_soon(
        self, lease: Lease, outcome: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Gives the lease back in the background: the response never waits for it, and a
        request cancelled because its client left still gives its lease back.

        Releases go out one ReleaseNodes call at a time: one made while a call is under way
        waits for it and leaves with every other release made meanwhile. An idle gateway sends
        each at once; a busy one sends one call for many requests instead of one each."""
        release = scheduler_pb2.ReleaseNodeRequest(
            lease_id=lease.lease_id,
            outcome=outcome,  # type: ignore[arg-type]
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        route = self._route
        if route is None or not route.release(release):
            self._queue_release(release)

    def _queue_release(self, release: scheduler_pb2.ReleaseNodeRequest) -> None:
        self._pending.append(release)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_releases())

    async def _send_releases(self) -> None:
        """Sends the queued releases; while the scheduler cannot be reached they wait and are
        tried again (with back-off), so that a scheduler restart leaves no node looking busy
        until the lease TTL. Past ``MAX_QUEUED_RELEASES`` the oldest are dropped (the TTL gives
        those back)."""
        delay = RELEASE_RETRY_FIRST_S
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._stub.ReleaseNodes(
                    scheduler_pb2.ReleaseNodesRequest(releases=batch),
                    timeout=self._release_timeout_s,
                )
                delay = RELEASE_RETRY_FIRST_S
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRIED_CODES:
                    log.warning("ReleaseNodes (%d leases) failed: %s", len(batch), err.code().name)
                    continue
                self._pending = (batch + self._pending)[-MAX_QUEUED_RELEASES:]
                log.warning(
                    "ReleaseNodes (%d leases) failed: %s; trying again in %.1f s",
                    len(batch),
                    err.code().name,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RELEASE_RETRY_MAX_S)

    async def drain(self, timeout_s: float) -> None:
        """Sends the releases still queued and closes the Route stream, waiting (up to
        ``timeout_s``) for them."""
        if self._route is not None:
            await self._route.close(timeout_s)
            for release in self._route.unsent_releases:
                self._queue_release(release)
            self._route.unsent_releases = []
        if self._sender is not None and not self._sender.done():
            await asyncio.wait({self._sender}, timeout=timeout_s)

    async def list_nodes(self, model: str = "") -> list[scheduler_pb2.Node]:
        reply = await self._stub.ListNodes(scheduler_pb2.ListNodesRequest(model=model))
        return list(reply.nodes)

    async def ready_models(self) -> list[str]:
        """The models with at least one ready, healthy node, sorted."""
        nodes = await self.list_nodes()
        return sorted(
            {n.model for n in nodes if n.state == scheduler_pb2.NODE_STATE_READY and n.healthy}
        )
