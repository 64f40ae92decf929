"""Forwarding one inference request to a node the scheduler picked, and relaying the answer.

Every lease is given back (``ReleaseNode``) whatever happens, and every request that reached a
node emits exactly one usage event with the tokens the node reported. A client that goes away
makes the gateway close the upstream connection at once, which is how vLLM learns to abort the
generation.

Failover: a node that fails before the client received any byte of the answer (connection
refused or reset, a 5xx status, a stream that breaks before its first event) is given back as
``OUTCOME_NODE_ERROR`` and the request goes once more, to another node the scheduler picks with
the failed one excluded. Once a byte reached the client the request never moves: the client
gets the node's failure (an error event in a stream). A read timeout is never retried: a slow
node may still be working on the request, and a retry would double the load and the cost; it
answers 504. A connect timeout is retried (the node never received the request) and answers
504 when the retry fails too. The failed attempt produced no tokens, so only the attempt that
answered is billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from opentelemetry import propagate

from cic_gateway.errors import CLIENT_CLOSED_REQUEST, SERVER_ERROR, ApiError, error_body
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.request_keys import MODEL_LABEL
from cic_gateway.scheduler_client import Lease, Outcome, SchedulerClient
from cic_gateway.sse import BadStream, StreamRelay, UsageWish, event_bytes, usage_of
from cic_gateway.store import KeyAuth
from cic_gateway.usage import UsageRecord, UsageSink

log = logging.getLogger(__name__)

_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    request_id: str
    auth: KeyAuth
    model: str
    path: str
    body: bytes
    stream: bool
    wish: UsageWish
    # Told the tokens the node reported (the rate limiter settles its reservation with them).
    on_usage: Callable[[int, int], None] | None = None
    # The hash of the prompt's start the scheduler keeps on one node (scheduler_client.prefix_key).
    prefix_key: str = ""


@dataclass(slots=True)
class Exchange:
    """What happened to one request on its node, for the lease and the usage event."""

    lease: Lease
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    status: int = 502
    outcome: int = Outcome.OUTCOME_NODE_ERROR
    reached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None

    def ended(self, status: int, outcome: int) -> None:
        self.status, self.outcome = status, outcome

    def moved_to(self, lease: Lease) -> Exchange:
        """The same request on another node: its clock keeps running, and a request that
        reached a node before still counts as one that did (one usage event, no tokens)."""
        return Exchange(lease, self.started_at, self.started, reached=self.reached)


class ClientGone(Exception):
    """Writing to the client failed: it closed the connection."""


class FailedBeforeFirstByte(Exception):
    """The node failed before the client received anything: the request may go elsewhere."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _node_failed(message: str, status: int = 502, code: str = "upstream_error") -> ApiError:
    return ApiError(status, message, type=SERVER_ERROR, code=code)


class Proxy:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        scheduler: SchedulerClient,
        sink: UsageSink,
        metrics: GatewayMetrics,
    ) -> None:
        self._session = session
        self._scheduler = scheduler
        self._sink = sink
        self._metrics = metrics

    def pick_early(self, model: str, prefix_key: str, region: str = "") -> asyncio.Future[Lease]:
        """The scheduler asked for a node now (in ``region`` by preference), for a request
        :meth:`handle` may serve later (or :meth:`abandon`)."""
        return asyncio.ensure_future(
            self._scheduler.pick(model, prefix_key=prefix_key, region=region)
        )

    def abandon(self, pick: asyncio.Future[Lease]) -> None:
        """An early pick whose request will not be served: its lease (once it comes) goes
        straight back."""

        def give_back(done: asyncio.Future[Lease]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            self._scheduler.release_soon(done.result(), Outcome.OUTCOME_CLIENT_ERROR, 0, 0)

        pick.add_done_callback(give_back)

    async def handle(
        self,
        request: web.Request,
        call: ProxyRequest,
        early_pick: asyncio.Future[Lease] | None = None,
    ) -> web.StreamResponse:
        """Serves ``call`` on the node ``early_pick`` chose (see :meth:`pick_early`), or on one
        the scheduler is asked for now."""
        try:
            if early_pick is not None:
                lease = await asyncio.shield(early_pick)
            else:
                lease = await self._scheduler.pick(
                    call.model, prefix_key=call.prefix_key, region=call.auth.environment.region
                )
        except asyncio.CancelledError:
            if early_pick is not None:
                self.abandon(early_pick)
            raise
        request[MODEL_LABEL] = call.model  # a model the scheduler knows: a bounded metric label
        exchange = Exchange(lease)
        try:
            try:
                return await self._attempt(request, call, exchange)
            except FailedBeforeFirstByte as failure:
                exchange = await self._fail_over(call, exchange, failure)
            try:
                return await self._attempt(request, call, exchange)
            except FailedBeforeFirstByte as failure:
                raise failure.error from None
        except asyncio.CancelledError:
            self._client_gone(exchange)
            raise
        finally:
            self._finish(call, exchange)

    async def _attempt(
        self, request: web.Request, call: ProxyRequest, exchange: Exchange
    ) -> web.StreamResponse:
        if call.stream:
            return await self._relay_stream(request, call, exchange)
        return await self._relay_unary(call, exchange)

    async def _fail_over(
        self, call: ProxyRequest, failed: Exchange, failure: FailedBeforeFirstByte
    ) -> Exchange:
        """The request on another node, the failed lease given back; raises the failure's own
        error when no other node can take it."""
        node_id = failed.lease.node_id
        try:
            lease = await self._scheduler.pick(
                call.model,
                exclude_node_ids=(node_id,),
                prefix_key=call.prefix_key,
                region=call.auth.environment.region,
            )
        except ApiError:
            self._metrics.failovers.labels("no_other_node").inc()
            raise failure.error from None
        self._metrics.failovers.labels("retried").inc()
        log.warning(
            "node %s failed before its first byte (%s); retrying request %s on node %s",
            node_id,
            failure.error.status,
            call.request_id,
            lease.node_id,
        )
        self._release(failed)
        return failed.moved_to(lease)

    async def _open(self, call: ProxyRequest, exchange: Exchange) -> aiohttp.ClientResponse:
        url = exchange.lease.endpoint + call.path
        headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
        propagate.inject(headers)  # vLLM continues the trace when it exports its own spans
        try:
            response = await self._session.post(url, data=call.body, headers=headers)
        except aiohttp.ConnectionTimeoutError:
            self._metrics.upstream_errors.labels("connect").inc()
            exchange.ended(504, Outcome.OUTCOME_NODE_ERROR)
            raise FailedBeforeFirstByte(
                _node_failed(
                    "The node serving this model did not answer in time.", 504, "upstream_timeout"
                )
            ) from None
        except aiohttp.ClientConnectorError:
            self._metrics.upstream_errors.labels("connect").inc()
            exchange.ended(502, Outcome.OUTCOME_NODE_ERROR)
            raise FailedBeforeFirstByte(
                _node_failed("The node serving this model could not be reached.")
            ) from None
        except TimeoutError:
            exchange.reached = True
            raise self._timed_out(exchange) from None
        except aiohttp.ClientError:
            exchange.reached = True
            raise FailedBeforeFirstByte(self._broken(exchange, "reset")) from None
        exchange.reached = True
        return response

    def _timed_out(self, exchange: Exchange) -> ApiError:
        self._metrics.upstream_errors.labels("timeout").inc()
        exchange.ended(504, Outcome.OUTCOME_NODE_ERROR)
        return _node_failed("The node serving this model timed out.", 504, "upstream_timeout")

    def _broken(self, exchange: Exchange, kind: str) -> ApiError:
        self._metrics.upstream_errors.labels(kind).inc()
        exchange.ended(502, Outcome.OUTCOME_NODE_ERROR)
        return _node_failed("The node serving this model failed.")

    async def _relay_unary(self, call: ProxyRequest, exchange: Exchange) -> web.Response:
        upstream = await self._open(call, exchange)
        return self._answer(upstream, await self._read_all(upstream, exchange), exchange)

    async def _read_all(self, upstream: aiohttp.ClientResponse, exchange: Exchange) -> bytes:
        try:
            return await upstream.read()
        except TimeoutError:
            raise self._timed_out(exchange) from None
        except aiohttp.ClientError:
            raise FailedBeforeFirstByte(self._broken(exchange, "reset")) from None
        finally:
            upstream.release()  # back to the pool when read to the end, else closed

    def _answer(
        self, upstream: aiohttp.ClientResponse, body: bytes, exchange: Exchange
    ) -> web.Response:
        """The node's complete answer as the client gets it: as is, unless the node failed."""
        if upstream.status >= 500:
            log.warning("node %s answered %d", exchange.lease.node_id, upstream.status)
            raise FailedBeforeFirstByte(self._broken(exchange, "status_5xx"))
        ok = upstream.status < 400
        exchange.ended(
            upstream.status, Outcome.OUTCOME_SUCCESS if ok else Outcome.OUTCOME_CLIENT_ERROR
        )
        if ok:
            exchange.prompt_tokens, exchange.completion_tokens = usage_of(body)
        content_type = upstream.headers.get("Content-Type", "application/json")
        return web.Response(
            status=upstream.status, body=body, headers={"Content-Type": content_type}
        )

    async def _relay_stream(
        self, request: web.Request, call: ProxyRequest, exchange: Exchange
    ) -> web.StreamResponse:
        upstream = await self._open(call, exchange)
        finished = False
        try:
            if upstream.status != 200:
                return self._answer(upstream, await self._read_all(upstream, exchange), exchange)
            response = web.StreamResponse(status=200, headers=_STREAM_HEADERS)
            try:
                exchange.ended(200, Outcome.OUTCOME_NODE_ERROR)
                finished = await self._pump(request, upstream, response, call, exchange)
            except ClientGone:
                self._client_gone(exchange)
            return response
        finally:
            if finished:
                upstream.release()
            else:
                upstream.close()  # vLLM aborts an unfinished generation when its connection drops

    async def _pump(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        call: ProxyRequest,
        exchange: Exchange,
    ) -> bool:
        """Copies events until the node's ``[DONE]``; True when the node's stream ended cleanly.
        The client's response starts with the first event, so that a node failing before it
        can still be answered with a status (and retried); after it, a node failure ends the
        client's stream with an error event."""
        relay = StreamRelay(call.wish)
        try:
            async for data in upstream.content.iter_any():
                events = relay.feed(data)
                if events and not response.prepared:
                    await _prepare(response, request)
                for event in events:
                    await _write(response, event)
                exchange.prompt_tokens = relay.prompt_tokens
                exchange.completion_tokens = relay.completion_tokens
                if relay.first_token_relayed and exchange.first_token_at is None:
                    self._first_token(call, exchange)
            if not relay.done:
                raise BadStream("the stream ended without [DONE]")
        except TimeoutError:
            error = self._timed_out(exchange)
        except (aiohttp.ClientError, BadStream) as err:
            log.warning("stream from node %s broke: %s", exchange.lease.node_id, err)
            error = self._broken(exchange, "bad_stream")
        else:
            exchange.ended(200, Outcome.OUTCOME_SUCCESS)
            await _write_eof(response)
            return True
        if not response.prepared:
            raise error if error.status == 504 else FailedBeforeFirstByte(error)
        with contextlib.suppress(ClientGone):
            await _write(
                response, event_bytes(error_body(error.message, type=error.type, code=error.code))
            )
            await _write_eof(response)
        return False

    def _first_token(self, call: ProxyRequest, exchange: Exchange) -> None:
        exchange.first_token_at = time.perf_counter()
        self._metrics.ttft.labels(call.model).observe(exchange.first_token_at - exchange.started)

    def _client_gone(self, exchange: Exchange) -> None:
        self._metrics.client_disconnects.inc()
        exchange.ended(CLIENT_CLOSED_REQUEST, Outcome.OUTCOME_CLIENT_ERROR)

    def _release(self, exchange: Exchange) -> None:
        self._scheduler.release_soon(
            exchange.lease, exchange.outcome, exchange.prompt_tokens, exchange.completion_tokens
        )

    def _finish(self, call: ProxyRequest, exchange: Exchange) -> None:
        if call.on_usage is not None:
            call.on_usage(exchange.prompt_tokens, exchange.completion_tokens)
        if exchange.reached:
            self._emit_usage(call, exchange)
        self._release(exchange)

    def _emit_usage(self, call: ProxyRequest, exchange: Exchange) -> None:
        self._metrics.tokens.labels(call.model, "prompt").inc(exchange.prompt_tokens)
        self._metrics.tokens.labels(call.model, "completion").inc(exchange.completion_tokens)
        self._sink.emit(
            UsageRecord(
                request_id=call.request_id,
                tenant_id=call.auth.tenant_id,
                api_key_id=call.auth.key_id,
                environment_id=call.auth.environment.id,
                region=exchange.lease.region,
                model=call.model,
                node_id=exchange.lease.node_id,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                started_at=exchange.started_at,
                finished_at=datetime.now(UTC),
                streamed=call.stream,
                status_code=exchange.status,
            )
        )


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionError:
        raise ClientGone() from None


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        raise ClientGone() from None


async def _write_eof(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionError:
        raise ClientGone() from None
